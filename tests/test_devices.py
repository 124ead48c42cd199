"""Device flags and selection on a machine without the GPUs asked for."""
from __future__ import annotations

import logging
import os

import torch

from utils.device import move_to, prepare_device, set_visible_devices
from utils.distributed import DistInfo


def test_device_flag_sets_cuda_visible_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert set_visible_devices("2,3") == 2 and os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert set_visible_devices("cpu") == 0 and os.environ["CUDA_VISIBLE_DEVICES"] == ""


def test_asking_for_more_gpus_than_present_warns_and_uses_what_is_there(caplog, monkeypatch):
    logger = logging.getLogger("test-devices")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with caplog.at_level(logging.WARNING, logger="test-devices"):
        device, ids = prepare_device(2, DistInfo(), logger)
    assert device.type == "cpu" and ids == [] and "no GPU is available" in caplog.text

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="test-devices"):
        device, ids = prepare_device(4, DistInfo(), logger)
    assert device == torch.device("cuda", 0) and ids == [] and "only 1 GPU(s)" in caplog.text

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert prepare_device(3, DistInfo(), logger) == (torch.device("cuda", 0), [0, 1, 2])  # DataParallel
    assert prepare_device(0, DistInfo(), logger) == (torch.device("cpu"), [])


def test_move_to_handles_nested_batches():
    """Every tensor at any depth changes device ("meta": a real device change without a GPU); other
    values are returned as they are and the container types are kept."""
    meta = torch.device("meta")
    name, count = "n", 3
    batch = {"x": torch.ones(2), "parts": [torch.zeros(1, dtype=torch.long), (torch.ones(1), name), count],
             "nested": {"y": (torch.ones(3, 2),)}}
    moved = move_to(batch, meta)
    assert moved["x"].device == meta and moved["x"].shape == (2,)
    assert type(moved["parts"]) is list and type(moved["parts"][1]) is tuple and type(moved["nested"]["y"]) is tuple
    assert moved["parts"][0].device == meta and moved["parts"][0].dtype == torch.long
    assert moved["parts"][1][0].device == meta and moved["parts"][1][1] is name and moved["parts"][2] is count
    assert moved["nested"]["y"][0].device == meta and moved["nested"]["y"][0].shape == (3, 2)
    assert batch["x"].device.type == "cpu"  # the input batch is left as it was
    assert move_to(torch.ones(1), meta).device == meta
