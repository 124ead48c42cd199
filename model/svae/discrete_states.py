"""What every graphical model with a Markov chain of K discrete states shares (SVAE-SLDS, SVAE-HMM), and what
every architecture that segments sequences with one shares.

`MarkovStates` (a GraphicalModel base): the global factors "initial_state" (Dirichlet (K,)) and "transitions"
(Dirichlet, one per row (K, K), sticky), E[Pi], the states' averaged usage and the revival of an unused state
fitted to the worst-explained part of a batch. A subclass names its per-state factor (`emission`:
"mniw" for the SLDS, "components" for the HMM), how many frames each state took in a batch (`state_counts`), and
puts the revival statistics in its Statistics' `revive` field. `chains_cut`: where a masked batch's chains end.

`SegmentingSVAE` (a SequenceSVAE base): the segmentation metrics (state_ari, state_nmi, state_accuracy), their
per-sequence breakdown, E[Pi] and the state usage in test.py, and the segmentation figures, for any
architecture whose local posterior has `states` (an HMMPosterior over the frames).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from base.metric import Metric, PerExample
from model.expfam import dirichlet
from model.metrics import adjusted_rand_index, match_labels, matched_accuracy, normalized_mutual_info
from model.svae.figures import log_segmentation
from model.svae.graphical_model import DIRICHLET, GraphicalModel
from model.svae.kalman import chain_extent
from model.svae.sequence import SequenceSVAE
from utils.errors import DataError

IN_USE_THRESHOLD = 0.05  # a state is "in use" in a batch when its share of the frames exceeds this


def chains_cut(mask: torch.Tensor | None) -> torch.Tensor | None:
    """`chain_extent` of a frame mask (B, T), or None when every sequence's last frame is real, so that no chain
    is cut: then inference runs with one transition matrix for every step instead of one per step of each
    chain (15% of a training step on full 30-frame windows), and gives the same. One host read per batch, as
    the mean-field sweeps already make."""
    if mask is None or bool(mask[:, -1].all()):
        return None
    return chain_extent(mask)


def _usage_of_old_checkpoints(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """Checkpoints written before states were revived by their averaged usage have no `usage`: uniform."""
    state_dict.setdefault(f"{prefix}usage", torch.full_like(module.usage, 1.0 / len(module.usage)))


class MarkovStates(GraphicalModel):
    """z_1 ~ Cat(pi0), z_t+1 | z_t ~ Cat(Pi[z_t]) with Dirichlet priors: alpha on pi0, alpha plus `stickiness`
    on the diagonal of each row of Pi. After each SVI step, the least used state, if its share of the frames
    (averaged over batches with the step size, buffer `usage`) is under `revive_below`, restarts fitted to the
    batch's worst-explained frames (`revive_unused_state`; 0 turns it off). `tied`: the states share one
    emission for now (a staged start): no usage, no revival."""

    #: the per-state global factor that a revived state refits
    emission: str
    tied: bool = False

    def add_markov_states(self, num_states: int, prior_alpha: float, stickiness: float, revive_below: float) -> None:
        """Register the two Dirichlet factors and the usage buffers (call in __init__)."""
        if prior_alpha <= 0:
            raise ValueError(f"prior_alpha must be > 0, got {prior_alpha}")
        if stickiness < 0:
            raise ValueError(f"stickiness must be >= 0, got {stickiness}")
        if not 0 <= revive_below < 1:
            raise ValueError(f"revive_below must be in [0, 1), got {revive_below}")
        K, f64 = num_states, torch.float64
        self.num_states, self.revive_below = num_states, revive_below
        self.add_global_factor("initial_state", DIRICHLET, dirichlet.alpha_to_natural(
            torch.full((K,), prior_alpha, dtype=f64)))
        self.add_global_factor("transitions", DIRICHLET, dirichlet.alpha_to_natural(
            prior_alpha + stickiness * torch.eye(K, dtype=f64)))
        self.register_buffer("revivals", torch.zeros((), dtype=torch.long))
        self.register_buffer("usage", torch.full((K,), 1.0 / K, dtype=f64))
        self._register_load_state_dict_pre_hook(_usage_of_old_checkpoints, with_module=True)

    def state_counts(self, statistics: NamedTuple) -> torch.Tensor:
        """The frames each state took in the batch of `statistics` (K,)."""
        raise NotImplementedError

    @torch.no_grad()
    def natural_gradient_step(self, statistics: NamedTuple, num_train: int, rho: float,
                              taken: torch.Tensor | None = None) -> None:
        """The SVI step of every factor, then `revive_unused_state` (none where `taken` is False: a skipped
        step changes nothing)."""
        super().natural_gradient_step(statistics, num_train, rho, taken)
        if self.revive_below > 0 and not self.tied:
            counts = self.state_counts(statistics)
            usage = (1 - rho) * self.usage + rho * counts / counts.sum()
            self.usage.copy_(usage if taken is None else torch.where(taken, usage, self.usage))
            self.revive_unused_state(statistics.revive, num_train / statistics.count, taken)

    @torch.no_grad()
    def revive_unused_state(self, worst: Any, scale: torch.Tensor | float, taken: torch.Tensor | None = None) -> None:
        """The least used state, if its `usage` fell below revive_below, restarts with its emission factor
        fitted to the batch's worst-explained frames (`worst`: their statistics, counted as `scale` times over:
        prior + scale * worst), its row and column of q(transitions) those of a typical state (the mean self-
        and switch counts: otherwise the few counts into a dead state keep every path out of it), and usage 1/K.
        Like k-means++ seeding a centre where the others fit worst: without it, the state that explains a batch
        best early in training, before the latents mean anything, takes every frame for good. One state per
        step; the usage average spares a state whose frames a batch happens to lack. Masked: no host sync."""
        k = self.usage.argmin()
        revive = self.usage[k] < self.revive_below
        if taken is not None:
            revive = revive & taken
        family = self.families[self.emission]
        prior, q = family.unpack(self.natural(self.emission, prior=True)), family.unpack(self.natural(self.emission))
        fitted = [prior_value[k] + scale * statistic for prior_value, statistic in zip(prior, family.unpack(worst))]
        self.set_natural(self.emission, family.pack(tuple(value.index_put((k,), torch.where(revive, new, value[k]))
                                                          for value, new in zip(q, fitted))))
        transitions = self.natural("transitions")
        stay = torch.eye(len(transitions), dtype=torch.bool, device=transitions.device)
        typical = torch.where(stay, transitions.diagonal().mean(), transitions[~stay].mean())
        reset = (torch.arange(len(transitions), device=k.device) == k)
        reset = reset[:, None] | reset[None, :]
        self.set_natural("transitions", torch.where(revive & reset, typical, transitions))
        self.usage[k] = torch.where(revive, 1.0 / len(self.usage), self.usage[k])
        self.revivals += revive.long()

    def worst_frames(self, fit: torch.Tensor, inside: torch.Tensor | None) -> torch.Tensor:
        """Weights (B, T): 1 on the 1/K of the frames inside the chains (`inside` (B, T) weights; None: all) whose
        expected log-potential `fit` (B, T) is lowest (the frames the states explain worst), else 0."""
        inside = torch.ones_like(fit) if inside is None else inside
        fit = torch.where(inside > 0, fit, torch.inf).flatten()
        worst = torch.zeros_like(fit)
        worst[torch.topk(fit, max(1, fit.numel() // self.num_states), largest=False).indices] = 1.0
        return worst.view_as(inside) * inside

    def states_in_use(self, marginals: torch.Tensor) -> torch.Tensor:
        """States whose share of a batch's frames, q(z_t) (B, T, K) averaged, exceeds IN_USE_THRESHOLD: ()."""
        return (marginals.detach().mean((0, 1)) > IN_USE_THRESHOLD).sum().double()

    def transition_matrix(self) -> torch.Tensor:
        """E[Pi] (K, K), rows summing to 1."""
        alpha = dirichlet.natural_to_alpha(self.natural("transitions"))
        return alpha / alpha.sum(-1, keepdim=True)


def _segmentation(score: Callable[[torch.Tensor, torch.Tensor], float]) -> Callable[[PerExample], float]:
    """Reduction: `score`(true labels, most likely states) over every labelled real frame of the split."""

    def reduce(per_example: PerExample) -> float:
        labels = per_example["frame_labels"]
        keep = labels >= 0
        return score(labels[keep], per_example["state_probs"].argmax(-1)[keep])

    return reduce


SEGMENTATION_METRICS = (
    Metric("state_ari", _segmentation(adjusted_rand_index),
           "adjusted Rand index of the most likely discrete state per frame against the frame labels",
           needs=("labels",)),
    Metric("state_nmi", _segmentation(normalized_mutual_info),
           "normalised mutual information of the most likely state per frame and the frame labels",
           needs=("labels",)),
    Metric("state_accuracy", _segmentation(matched_accuracy),
           "share of frames whose most likely state maps to their label, states matched one-to-one to "
           "labels (Hungarian)", needs=("labels",)),
)


class SegmentingSVAE(SequenceSVAE):
    """A SequenceSVAE whose graphical model is `MarkovStates` and whose local posterior has `states` (q(z) of
    every frame, an HMMPosterior). Batches may carry "labels" (B, T) (per-frame labels, -1 for none) for the
    segmentation metrics and "sequence" (B,) (the example's sequence index) for their per-sequence breakdown.

    Args (besides SequenceSVAE's): figure_sequences: sequences drawn in the segmentation figures;
    label_names, channel_names, sequence_names, frame_rate: what the data loader knows (set by the
    framework), for the figures and the per-sequence results.
    """

    metrics = SequenceSVAE.metrics + SEGMENTATION_METRICS

    def init_segmentation(self, figure_sequences: int, label_names: tuple[str, ...] | None,
                          channel_names: tuple[str, ...] | None, sequence_names: tuple[str, ...] | None,
                          frame_rate: float | None) -> None:
        """Call after SequenceSVAE.__init__."""
        if figure_sequences < 1:
            raise ValueError(f"figure_sequences must be >= 1, got {figure_sequences}")
        self.visualization_size = figure_sequences
        self.label_names, self.channel_names, self.sequence_names = label_names, channel_names, sequence_names
        self.frame_rate = frame_rate

    def evaluate_more(self, batch: dict[str, torch.Tensor], y: torch.Tensor, post: Any,
                      metrics: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Besides the prediction errors: q(z_t) (B, T, K) and, for the segmentation metrics, the frame labels
        (B, T), -1 on frames outside the mask."""
        out = super().evaluate_more(batch, y, post, metrics)
        out["state_probs"] = post.states.marginals
        if any(metric.name in metrics and "labels" in metric.needs for metric in self.metrics):
            if "labels" not in batch:
                raise DataError("metrics state_ari, state_nmi and state_accuracy need per-frame 'labels', but the "
                                "data loader's batches have none; drop them from the config's `metrics`")
            labels, mask = batch["labels"], self.observed_nodes(batch)
            out["frame_labels"] = labels if mask is None else torch.where(mask, labels, -1)
            if "sequence" in batch:
                out["sequence"] = batch["sequence"]
        return out

    def model_summary(self, per_example: PerExample) -> dict[str, Any]:
        """Besides the KL: E[Pi], and the share of frames whose most likely state is k, per state."""
        summary = super().model_summary(per_example)
        summary["transition_matrix"] = [[round(float(p), 4) for p in row] for row in self.pgm.transition_matrix()]
        if "state_probs" in per_example:
            K = self.pgm.num_states
            frames = per_example["state_probs"].argmax(-1)
            if "frame_labels" in per_example:
                frames = frames[per_example["frame_labels"] >= 0]
            share = torch.bincount(frames.flatten(), minlength=K).double()
            summary["state_usage"] = [round(float(s), 4) for s in share / share.sum()]
        if "sequence" in per_example:
            summary["per_sequence"] = self.per_sequence_segmentation(per_example)
        return summary

    def per_sequence_segmentation(self, per_example: PerExample) -> dict[str, dict[str, float]]:
        """Sequence name -> its labelled frames' count, state_ari, state_nmi and state_accuracy, from the
        examples' "sequence" indices (B,) (windows of one sequence pool their frames). state_accuracy maps
        states to labels by the one match over every frame of the split, so a state names the same label in
        every sequence; ARI and NMI need no matching."""
        labels, states = per_example["frame_labels"], per_example["state_probs"].argmax(-1)
        keep = labels >= 0
        num_labels = max(self.pgm.num_states, int(labels.max()) + 1)
        permutation = match_labels(states[keep], labels[keep], num_labels)
        sequence = per_example["sequence"][:, None].expand_as(labels)
        out = {}
        for index in sequence[keep].unique().tolist():
            frames = keep & (sequence == index)
            truth, found = labels[frames], states[frames]
            name = self.sequence_names[index] if self.sequence_names else str(index)
            out[name] = {"frames": int(frames.sum()), "state_ari": round(adjusted_rand_index(truth, found), 4),
                         "state_nmi": round(normalized_mutual_info(truth, found), 4),
                         "state_accuracy": round(float((permutation[found] == truth).double().mean()), 4)}
        return out

    @torch.no_grad()
    def visualize(self, writer: Any, batch: dict[str, torch.Tensor], step: int, tag: str) -> None:
        """Per sequence (the first `figure_sequences`, whole: inference sees every real frame),
        `{tag}/segmentation_{i}`: the most likely state per frame, relabelled by the one match of states to
        labels over these sequences' frames (`match_labels`), above the labels; `{tag}/segmentation_{i}_data`:
        the channel traces; then SequenceSVAE's prediction figures."""
        count = self.visualization_size
        y = self.observations(batch)[:count]
        mask = self.observed_nodes(batch)
        mask = None if mask is None else mask[:count]
        post = self.infer(y, self.expected_globals().potentials, 0, mask)
        inferred = post.states.marginals.argmax(-1)
        if mask is not None:
            inferred = torch.where(mask, inferred, -1)
        states, names = {"inferred state": inferred}, None
        labels = batch.get("labels")
        if labels is not None and bool((labels[:count] >= 0).any()):
            truth = labels[:count]
            both = (truth >= 0) & (inferred >= 0)
            permutation = match_labels(inferred[both], truth[both], max(self.pgm.num_states, int(truth.max()) + 1))
            matched = torch.where(inferred >= 0, permutation[inferred.clamp(min=0)], -1)
            states, names = {"inferred (matched)": matched, "annotated": truth}, self.label_names
        for b in range(len(y)):
            length = int(mask[b].sum()) if mask is not None else y.shape[1]
            index = int(batch["sequence"][b]) if "sequence" in batch else b
            name = self.sequence_names[index] if self.sequence_names else str(index)
            log_segmentation(writer, f"{tag}/segmentation_{b}", step,
                             {key: bar[b, :length] for key, bar in states.items()}, y[b, :length], name, names,
                             self.channel_names, self.frame_rate)
        super().visualize(writer, batch, step, tag)
