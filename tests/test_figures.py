"""Every architecture's `visualize` figures read in a TensorBoard card: landscape, in the card's proportions, every
text at least MIN_CARD_PX tall on the card, PNG files at least MIN_PNG_SIDE_PX on the shorter side, a title (with
room for the split and epoch the FigureWriter appends), axis labels, nothing outside the figure, and heat maps of
the learned graphs with one number per allowed edge and the forbidden edges marked. Set FIGURES_DIR to also save
every figure there as PNG."""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.text import Text

from model.figures import CARD_HEIGHT_PX, CARD_WIDTH_PX
from model.graph.figures import adjacency_figure
from model.graph.gates import EdgeGates
from model.graph.graph_vae import GraphLSTMVAE, GraphVAE
from model.graph.recurrent import RecurrentGraphVAE
from model.svae.gmm import SVAEGMM
from model.svae.lds import SVAELDS
from model.svae.slds import SVAESLDS
from model.vae import VAE

MIN_CARD_PX = 9  # every text's height on the card: titles, labels, ticks, legends, colour bars, cell numbers
MIN_PNG_SIDE_PX = 480  # the PNG files in a run's figures/ stay full size
SPLIT_AND_EPOCH = " (test, epoch 1000)"  # what logger.figures.FigureWriter appends to a figure's title


def card_scale(fig: Figure) -> float:
    """How much the card (CARD_HEIGHT_PX x CARD_WIDTH_PX) shrinks the figure's pixels."""
    width, height = fig.get_size_inches() * fig.dpi
    return min(CARD_HEIGHT_PX / height, CARD_WIDTH_PX / width)


def card_px(text: Text, fig: Figure) -> float:
    """The height of a text on the card: its font size in pixels of the figure, times the card's scale."""
    return text.get_fontsize() / 72 * fig.dpi * card_scale(fig)


class RecordingWriter:
    """Records add_figure calls as {tag: Figure}; refuses everything else (no raw images)."""

    def __init__(self):
        self.figures: dict[str, Figure] = {}

    def add_figure(self, tag: str, figure: Figure, global_step: int | None = None, close: bool = True) -> None:
        assert tag not in self.figures, f"{tag} written twice"
        self.figures[tag] = figure


def visualize(model, batch: dict[str, torch.Tensor], name: str) -> dict[str, Figure]:
    writer = RecordingWriter()
    model.eval()
    model.visualize(writer, batch, 7, "val")
    for tag, fig in writer.figures.items():
        try:
            check_figure(tag, fig)
        finally:  # a figure that fails is saved too, to be looked at
            save(fig, name, tag)
    return writer.figures


def save(fig: Figure, name: str, tag: str) -> None:
    if os.environ.get("FIGURES_DIR"):
        folder = Path(os.environ["FIGURES_DIR"])
        folder.mkdir(parents=True, exist_ok=True)
        fig.savefig(folder / f"{name}__{tag.replace('/', '__')}.png")


def check_figure(tag: str, fig: Figure) -> None:
    width, height = fig.get_size_inches() * fig.dpi
    assert height >= MIN_PNG_SIDE_PX, (tag, width, height)
    assert height <= width <= height * CARD_WIDTH_PX / CARD_HEIGHT_PX + 1, f"{tag}: {width} x {height} px"
    assert fig.get_suptitle(), f"{tag}: no title"
    fig.suptitle(fig.get_suptitle() + SPLIT_AND_EPOCH)
    canvas = FigureCanvasAgg(fig)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "constrained_layout not applied"
        canvas.draw()
    axes = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
    assert any(ax.get_xlabel() for ax in axes), f"{tag}: no x label"
    assert any(ax.get_ylabel() or any(t.get_text() for t in ax.get_yticklabels()) for ax in axes), \
        f"{tag}: no y label"
    renderer = canvas.get_renderer()

    def inside(extent) -> bool:
        box = fig.bbox
        return extent.x0 >= box.x0 - 1 and extent.x1 <= box.x1 + 1 and extent.y0 >= box.y0 - 1 and \
            extent.y1 <= box.y1 + 1

    tick_labels = {id(t) for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)
                   for tick in axis.get_major_ticks() + axis.get_minor_ticks() for t in (tick.label1, tick.label2)}
    title = fig._suptitle.get_window_extent(renderer)
    for text in fig.findobj(Text):
        if not text.get_visible() or not text.get_text().strip() or not text.get_window_extent(renderer).width:
            continue
        assert card_px(text, fig) >= MIN_CARD_PX, (tag, text.get_text(), round(card_px(text, fig), 2))
        if id(text) in tick_labels:  # ticks outside the view are not drawn; the axes' box holds the rest
            continue
        assert inside(text.get_window_extent(renderer)), f"{tag}: {text.get_text()!r} is clipped"
        if text is not fig._suptitle:
            assert not title.overlaps(text.get_window_extent(renderer)), f"{tag}: {text.get_text()!r} on the title"
    for ax in fig.axes:
        if ax.get_visible():
            assert inside(ax.get_tightbbox(renderer)), f"{tag}: an axes reaches outside the figure"
            assert not title.overlaps(ax.get_tightbbox(renderer)), f"{tag}: an axes on the title"


def check_heat_map(fig: Figure, mask: torch.Tensor, values: torch.Tensor, binary: bool) -> None:
    """One number per allowed cell (the value, rounded), a hatched cell per forbidden one."""
    ax = fig.axes[0]
    numbers = []
    for text in ax.texts:
        try:
            numbers.append((round(text.get_position()[1]), round(text.get_position()[0]), float(text.get_text())))
        except ValueError:
            assert text.get_text() == "–", text.get_text()
    allowed = mask.nonzero().tolist()
    assert sorted((m, n) for m, n, _ in numbers) == sorted(map(tuple, allowed))
    for m, n, value in numbers:
        expected = float(values[m, n] > 0.5) if binary else round(float(values[m, n]), 2)
        assert value == pytest.approx(expected, abs=0.006)
    hatched = {(round(p.get_y() + 0.5), round(p.get_x() + 0.5)) for p in ax.patches
               if isinstance(p, Rectangle) and p.get_hatch()}
    assert hatched == {tuple(mn) for mn in (mask == 0).nonzero().tolist()}
    dashes = sum(text.get_text() == "–" for text in ax.texts)
    assert dashes == len(hatched)
    if hatched:
        assert any("not allowed" in t.get_text() for legend in fig.legends for t in legend.get_texts())
    if not binary:
        [colorbar] = [a for a in fig.axes if a.get_label() == "<colorbar>"]
        assert colorbar.get_ylim() == (0.0, 1.0)


# ---------------------------------------------------------------- data
def blobs(n: int, shape=(1, 28, 28), seed: int = 0) -> torch.Tensor:
    """Images (n, C, H, W) of a bright disc at a random place."""
    gen = torch.Generator().manual_seed(seed)
    _, H, W = shape
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    centre = torch.rand(n, 2, generator=gen) * torch.tensor([H - 10, W - 10]) + 5
    dist = (ys - centre[:, 0, None, None]) ** 2 + (xs - centre[:, 1, None, None]) ** 2
    return (dist < 25).float().unsqueeze(1).expand(n, *shape).contiguous()


def dot_video(B: int, T: int, P: int, seed: int = 0) -> torch.Tensor:
    """(B, T, P): a dot bouncing along P pixels."""
    gen = torch.Generator().manual_seed(seed)
    phase, speed = torch.rand(B, 1, generator=gen), 0.02 + 0.05 * torch.rand(B, 1, generator=gen)
    wave = 2 * ((phase + speed * torch.arange(T)) % 1.0 - 0.5).abs()  # triangle wave in [0, 1]
    pos = wave * (P - 1)  # (B, T)
    return torch.exp(-0.5 * (torch.arange(P) - pos[..., None]) ** 2)


def set_logits(gates, seed: int) -> None:
    with torch.no_grad():
        gates.logits.copy_(torch.randn(gates.logits.shape, generator=torch.Generator().manual_seed(seed)) *
                           gates.mask)


# ---------------------------------------------------------------- per architecture
def test_vae_images():
    torch.manual_seed(0)
    figures = visualize(VAE((1, 28, 28), latent_dim=4, hidden_dims=[16]), {"x": blobs(32)}, "vae")
    assert set(figures) == {"val/reconstructions", "val/samples"}
    ticks = [t.get_text() for t in figures["val/reconstructions"].axes[0].get_yticklabels()]
    assert ticks == ["data", "reconstruction"] * 2


def test_vae_scatter():
    torch.manual_seed(0)
    figures = visualize(VAE((2,), latent_dim=2, hidden_dims=[8]), {"x": torch.randn(200, 2)}, "vae2d")
    assert set(figures) == {"val/data_vs_samples"}
    assert figures["val/data_vs_samples"].legends


@pytest.mark.parametrize("cls", [GraphVAE, GraphLSTMVAE])
def test_graph_vae(cls):
    torch.manual_seed(0)
    model = cls((1, 28, 28), num_nodes=5, node_dim=3, hidden_dims=[32, 16], head_hidden_dims=[8])
    set_logits(model.gates, 1)
    figures = visualize(model, {"x": blobs(32)}, cls.__name__)
    assert set(figures) == {"val/edge_probs", "val/adjacency", "val/reconstructions", "val/samples"}
    check_heat_map(figures["val/edge_probs"], model.gates.mask, model.gates.probs().detach(), binary=False)
    check_heat_map(figures["val/adjacency"], model.gates.mask, model.gates.hard(), binary=True)


@pytest.mark.parametrize("edges", ["lower", "all"])
def test_adjacency_with_every_edge_on(edges):
    gates = EdgeGates(4, init_logit=3.0, edges=edges)
    fig = adjacency_figure(gates.hard(), gates.mask, "Learned graph: hard edges")
    check_figure(f"adjacency_all_on_{edges}", fig)
    save(fig, f"all_on_{edges}", "adjacency")
    check_heat_map(fig, gates.mask, gates.hard(), binary=True)
    allowed = int(gates.mask.sum())
    assert f"{allowed} of {allowed} allowed on" in fig.get_suptitle()


def recurrent(likelihood: str, T: int, P: int, prefix_len: int, horizon: int, samples: int = 2) -> RecurrentGraphVAE:
    torch.manual_seed(0)
    model = RecurrentGraphVAE((T, P), num_nodes=4, node_dim=2, state_dim=8, feature_dims=[6], encoder_dim=7,
                              head_hidden_dims=[5], decoder_hidden_dims=[6], likelihood=likelihood,
                              prefix_len=prefix_len, horizon=horizon, figure_samples=samples)
    set_logits(model.gates, 2)
    set_logits(model.prev_gates, 3)
    return model


def panel_names(fig: Figure) -> list[str]:
    """The names of a sequence figure's panels, top to bottom."""
    return [ax.get_ylabel() for ax in fig.axes if ax.get_label() != "<colorbar>"]


def test_recurrent_graph_vae_sequences_and_graphs():
    model = recurrent("gaussian", 32, 20, 16, 16)
    x = dot_video(6, 32, 20)
    mask = torch.ones(6, 32, dtype=torch.bool)
    mask[1, 25:] = False  # a shorter sequence: its padded steps are drawn grey
    figures = visualize(model, {"x": x, "mask": mask}, "recurrent")
    graphs = {f"val/{kind}/{name}" for kind in ("same_step", "previous_step") for name in ("edge_probs", "adjacency")}
    assert set(figures) == graphs | {f"val/sequences_{i}" for i in range(3)}
    for kind, gates in (("same_step", model.gates), ("previous_step", model.prev_gates)):
        check_heat_map(figures[f"val/{kind}/edge_probs"], gates.mask, gates.probs().detach(), binary=False)
        check_heat_map(figures[f"val/{kind}/adjacency"], gates.mask, gates.hard(), binary=True)
    assert panel_names(figures["val/sequences_0"]) == ["data", "reconstruction", "continuation 1", "continuation 2"]
    legend = [t.get_text() for t in figures["val/sequences_1"].legends[0].get_texts()]
    assert any("prefix" in t for t in legend) and any("end of the sequence" in t for t in legend)


@pytest.mark.parametrize("samples", [2, 3])
def test_recurrent_graph_vae_pen_strokes(samples):
    """Four panels in a row, or five in two rows."""
    model = recurrent("stroke", 16, 3, 8, 8, samples)
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([(torch.rand(3, 16, 1, generator=gen) < 0.15).float(), torch.randn(3, 16, 2, generator=gen)], -1)
    figures = visualize(model, {"x": x}, f"strokes{samples}")
    assert {f"val/sequences_{i}" for i in range(3)} <= set(figures)
    assert [ax.get_title() for ax in figures["val/sequences_0"].axes if ax.get_visible()] == \
        ["data", "reconstruction"] + [f"continuation {i + 1}" for i in range(samples)]


def test_svae_lds_predictions():
    torch.manual_seed(0)
    model = SVAELDS((45, 20), 8, latent_dim=3, hidden_dims=[10], prefix_len=25, horizon=20, figure_samples=3)
    figures = visualize(model, {"x": dot_video(3, 45, 20)}, "svae_lds")
    assert set(figures) == {f"val/predictions_{i}" for i in range(3)}
    fig = figures["val/predictions_0"]
    assert panel_names(fig) == \
        ["data", "predicted mean", "sample 1", "sample 2", "sample 3"]
    assert any(a.get_label() == "<colorbar>" for a in fig.axes) and fig.legends


def test_svae_gmm_clusters():
    torch.manual_seed(0)
    model = SVAEGMM((2,), 100, num_components=6, hidden_dims=[8])
    angles = torch.arange(300) % 5 * (2 * math.pi / 5)
    y = torch.stack([angles.cos(), angles.sin()], -1) * 3 + 0.4 * torch.randn(300, 2)
    figures = visualize(model, {"x": y}, "svae_gmm")
    assert set(figures) == {"val/clusters_latent", "val/clusters_data"}
    for fig in figures.values():
        assert fig.legends and "weight" in fig.legends[0].get_title().get_text()


MOCAP_STATES = ("JumpJack", "Jog", "Squat", "KneeRaise", "ArmCircle", "Twist", "SideReach", "Box", "UpDown",
                "ToeTouchOneHand", "SideBend", "ToeTouchTwoHands")
MOCAP_CHANNELS = ("root.ty", "lowerback.rx", "lowerback.ry", "upperneck.ry", "rhumerus.rz", "rradius.rx",
                  "lhumerus.rz", "lradius.rx", "rtibia.rx", "rfoot.rx", "ltibia.rx", "lfoot.rx")


@pytest.mark.parametrize("channels", [12, 20])
def test_svae_slds_segmentations(channels):
    """Motion capture's long state and channel names (12 channels: traces), or 20 channels (a heat map); one
    sequence shorter than the others, with unlabelled frames."""
    torch.manual_seed(0)
    T, K = 120, 12
    model = SVAESLDS((T, channels), 8, num_states=K, latent_dim=2, hidden_dims=[8], prefix_len=20, horizon=10,
                     figure_samples=3, likelihood="gaussian", label_names=MOCAP_STATES,
                     channel_names=MOCAP_CHANNELS if channels == 12 else None, sequence_names=("13_29", "14_06"),
                     frame_rate=10.0, figure_sequences=2)
    labels = (torch.arange(T) // 10 % K).expand(2, T).clone()
    labels[0, :7] = -1
    mask = torch.ones(2, T, dtype=torch.bool)
    mask[1, 90:] = False
    batch = {"x": torch.randn(2, T, channels), "labels": labels, "mask": mask, "sequence": torch.tensor([0, 1])}
    figures = visualize(model, batch, f"svae_slds_{channels}")
    assert set(figures) == {f"val/{kind}_{b}" for kind in ("segmentation", "predictions") for b in range(2)} | \
        {f"val/segmentation_{b}_data" for b in range(2)}
    bars = [t.get_text() for ax in figures["val/segmentation_0"].axes for t in ax.get_yticklabels()]
    assert bars == ["inferred (matched)", "annotated"]
    legend = {t.get_text() for t in figures["val/segmentation_0"].legends[0].get_texts()}
    assert "unlabelled" in legend and legend - {"unlabelled"} <= set(MOCAP_STATES)
    data = figures["val/segmentation_1_data"]
    if channels == 12:
        assert [t.get_text() for t in data.axes[0].get_yticklabels()] == list(MOCAP_CHANNELS)
    else:
        assert any(a.get_label() == "<colorbar>" for a in data.axes)
