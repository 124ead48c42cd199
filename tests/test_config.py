"""Config loading: both formats, defaults, overrides, validation errors."""
from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT
from trainer.components import load_and_check
from utils.config import load_config, parse_value, read_config_file
from utils.errors import ConfigError


@pytest.mark.parametrize("yaml_path", sorted(p for p in (ROOT / "configs").rglob("*.yaml")
                                              if p.with_suffix(".json").exists()), ids=lambda p: p.stem)
def test_yaml_and_json_shipped_configs_are_the_same(yaml_path):
    json_path = yaml_path.with_suffix(".json")
    assert read_config_file(yaml_path) == read_config_file(json_path)
    assert load_and_check(yaml_path) == load_and_check(json_path)


def test_defaults_are_filled_in():
    config = load_config(base={"arch": {"type": "VAE"}, "data_loader": {"type": "Pinwheel"}})
    assert config["trainer"]["epochs"] == 10 and config["trainer"]["amp"] == "off"
    assert config["optimizer"] == {"type": "Adam", "args": {"lr": 1e-3}}


@pytest.mark.parametrize("text, value", [("3e-4", 3e-4), ("1E5", 1e5), ("2", 2), ("[1, 2]", [1, 2]),
                                         ("true", True), ("off", "off"), ("null", None), ("abc", "abc")])
def test_override_values_are_parsed_as_yaml(text, value):
    assert parse_value(text) == value and type(parse_value(text)) is type(value)


def test_yaml_file_reads_scientific_floats(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("arch: {type: VAE}\ndata_loader: {type: Pinwheel}\noptimizer: {type: Adam, args: {lr: 3e-4}}\n")
    assert load_config(path)["optimizer"]["args"]["lr"] == 3e-4


def test_overrides_set_nested_and_free_form_keys():
    config = load_and_check(ROOT / "configs/vae_pinwheel.yaml", [
        "optimizer.args.lr=3e-4", "trainer.epochs=2", "arch.args.latent_dim=3", "trainer.grad_clip=1"])
    assert config["optimizer"]["args"]["lr"] == 3e-4
    assert config["trainer"]["epochs"] == 2 and config["arch"]["args"]["latent_dim"] == 3
    assert config["trainer"]["grad_clip"] == 1.0 and isinstance(config["trainer"]["grad_clip"], float)


@pytest.mark.parametrize("override, message", [
    ("trainer.epoch=2", "unknown config key 'trainer.epoch'"),
    ("foo.bar=1", "unknown config key 'foo'"),
    ("trainer.epochs=two", "'trainer.epochs' must be int"),
    ("trainer.amp=fp8", "'trainer.amp' must be one of"),
    ("trainer.epochs=0", "'trainer.epochs' must be >= 1"),
    ("trainer.monitor=lowest loss", "'trainer.monitor' must be"),
    ("arch.args.latent=3", "unknown config key 'arch.args.latent' for architecture 'VAE'"),
    ("arch.args.latent_dim=2.5", "'arch.args.latent_dim' must be int"),
    ("arch.args.data_shape=[2]", "set by the framework"),
    ("arch.type=Transformer", "unknown architecture 'Transformer' at 'arch.type'; valid names: "),
    ("data_loader.type=CIFAR", "unknown data loader 'CIFAR'"),
    ("data_loader.args.batch_size=big", "'data_loader.args.batch_size' must be int"),
    ("optimizer.type=Adamm", "unknown optimizer 'Adamm'"),
    ("optimizer.args.lrr=1", "unknown config key 'optimizer.args.lrr'"),
    ("lr_scheduler.type=StepLRR", "unknown lr scheduler 'StepLRR'"),
    ("lr_scheduler={type: StepLR}", "misses required argument(s) step_size"),
    ("metrics=[elbo, fid]", "names 'fid'"),
    ("trainer.epochs", "must look like key.path=value"),
    ("optimizer.lr_scheduler={type: StepLR}", "unknown config key 'optimizer.lr_scheduler'"),
])
def test_bad_configs_name_the_key(override, message):
    with pytest.raises(ConfigError, match=None) as info:
        load_and_check(ROOT / "configs/vae_pinwheel.yaml", [override])
    assert message in str(info.value)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ConfigError) as info:
        load_and_check(ROOT / "configs/vae_pinwheel.yaml", ["arch.type=Nope"])
    assert "VAE" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_and_check(ROOT / "configs/vae_pinwheel.yaml", ["optimizer.type=Nope"])
    assert "Adam" in str(info.value) and "SGD" in str(info.value)


def test_unknown_top_level_key_in_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"arch": {"type": "VAE"}, "data_loader": {"type": "Pinwheel"}, "trainr": {}}))
    with pytest.raises(ConfigError, match="unknown config key 'trainr'"):
        load_config(path)


@pytest.mark.parametrize("name, text, message", [
    ("c.yaml", "arch: [unclosed", "invalid YAML"),
    ("c.json", "{not json", "invalid JSON"),
    ("c.toml", "a = 1", "must end in .json, .yaml or .yml"),
    ("c.yaml", "- a list", "must hold a mapping"),
])
def test_unreadable_config_files(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_optimizer_per_parameter_group_config(regression_config):
    regression_config["arch"]["type"] = "HookProbe"
    regression_config["optimizer"] = {
        "weight": {"type": "SGD", "args": {"lr": 0.1}, "lr_scheduler": {"type": "StepLR", "args": {"step_size": 1}}},
        "bias": {"type": "Adam", "args": {"lr": 0.01}},
    }
    load_and_check(base=regression_config)
    regression_config["lr_scheduler"] = {"type": "StepLR", "args": {"step_size": 1}}
    with pytest.raises(ConfigError, match="inside each group"):
        load_and_check(base=regression_config)


def test_a_config_builds_on_its_base(tmp_path):
    """`base:` names a file relative to the config; mappings merge key by key, anything else is replaced, and a
    base may have a base."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "root.yaml").write_text("name: root\nseed: 3\nmetrics: [elbo, iw_nll]\n"
                                        "arch: {type: VAE, args: {hidden_dims: [8, 8], kl_warmup_epochs: 2}}\n")
    (tmp_path / "sub" / "middle.yaml").write_text("base: ../root.yaml\nname: middle\n"
                                                  "arch: {args: {hidden_dims: [4]}}\n")
    (tmp_path / "sub" / "leaf.json").write_text('{"base": "middle.yaml", "metrics": ["elbo"]}')
    config = read_config_file(tmp_path / "sub" / "leaf.json")
    assert config == {"name": "middle", "seed": 3, "metrics": ["elbo"],
                      "arch": {"type": "VAE", "args": {"hidden_dims": [4], "kl_warmup_epochs": 2}}}


def test_the_shipped_held_out_mocap_config_is_the_mocap_config_with_its_split_changed():
    base = read_config_file(ROOT / "configs" / "mocap" / "svae_slds.yaml")
    held_out = read_config_file(ROOT / "configs" / "mocap" / "svae_slds_heldout.yaml")
    assert held_out["data_loader"]["args"]["test_sequences"] == [2]
    assert held_out["arch"]["type"] == base["arch"]["type"] and held_out["trainer"] == base["trainer"]
    assert {k: v for k, v in held_out["arch"]["args"].items() if k != "figure_sequences"} == \
        {k: v for k, v in base["arch"]["args"].items() if k != "figure_sequences"}


@pytest.mark.parametrize("base, message", [
    ("missing.yaml", r"config key 'base' in .*a.yaml must name a config file relative to it, got 'missing.yaml'"),
    ("[1, 2]", r"config key 'base' in .*a.yaml must name a config file relative to it, got \[1, 2\]"),
    ("b.yaml", r"is its own base \(config key 'base'\)"),
])
def test_bad_bases_name_the_file(tmp_path, base, message):
    (tmp_path / "a.yaml").write_text(f"base: {base}\nname: a\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nname: b\n")
    with pytest.raises(ConfigError, match=message):
        read_config_file(tmp_path / "a.yaml")
