"""SVAE-SLDS: a switching linear dynamical system over the latents, per-frame recognition potentials and a
per-frame diagonal-Gaussian decoder (SVAE.md section 6). Local inference (structured mean field) is in
`slds_inference.py`.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Literal, NamedTuple

import torch
from torch import nn

from base.metric import Metric, PerExample
from model.expfam import dirichlet
from model.expfam.mniw import MNIWNatural
from model.expfam.niw import NIWNatural
from model.metrics import adjusted_rand_index, match_labels, matched_accuracy, normalized_mutual_info
from model.registry import ARCHITECTURES
from model.svae.ar_hmm import ARHMMFit, ARHMMPrior, StepMoments, fit_ar_hmm, pooled_dynamics_prior, step_features
from model.svae.chain import dynamics_prior, dynamics_statistics, initial_state_prior, initial_state_statistics, \
    point_dynamics, simulate_dynamics
from model.svae.figures import log_segmentation
from model.svae.graphical_model import DIRICHLET, MNIW, NIW, GraphicalModel
from model.svae.hmm import hmm_log_normalizer
from model.svae.kalman import METHODS, chain_extent, expected_lds_potentials, initial_log_potential
from model.svae.sequence import SequenceSVAE
from model.svae.slds_inference import SwitchingPosterior, SwitchingPotentials, switching_meanfield
from utils.errors import DataError


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


class SwitchingStatistics(NamedTuple):
    """The SLDS's statistics: q(z_1) and q(z_t, z_t+1) summed (K,), (K, K); the initial state's NIW; the K
    dynamics' MNIW (batch K); the sequences they sum over; and the MNIW statistics of the batch's
    worst-explained steps that `revive_unused_state` fits a state to (None when reviving is off)."""
    initial_state: torch.Tensor
    transitions: torch.Tensor
    niw: NIWNatural
    mniw: MNIWNatural
    count: torch.Tensor
    revive: MNIWNatural | None = None


class SwitchingLinearDynamicalSystem(GraphicalModel):
    """z_1 ~ Cat(pi0), z_t+1 | z_t ~ Cat(Pi[z_t]); x_1 ~ N(mu0, Sigma0), x_t+1 = A_{z_t} x_t + eps,
    eps ~ N(0, Q_{z_t}): K discrete states and one n-dimensional latent per frame. Global factors
    "initial_state" (Dirichlet (K,)), "transitions" (Dirichlet, one per row (K, K)), "niw" (mu0, Sigma0) and
    "mniw" (A_k, Q_k, batch K).

    Priors: Dirichlet alpha = prior_alpha, plus `stickiness` on the diagonal of the transitions; NIW and MNIW
    as SVAE-LDS (`chain.py`). q(theta) starts at the prior except the dynamics means,
    M_k = I + init_dynamics_scale * N(0, I / n) (distinct states, or every state stays the same). Local
    inference: `switching_meanfield`. After each SVI step, the least used state, if its share of the frames
    (averaged over batches, buffer `usage`) is under `revive_below`, restarts fitted to the batch's
    worst-explained steps (`revive_unused_state`; 0 turns it off).

    `temperature` (a 0-d buffer the architecture's schedule sets, >= 1): in training, q(z) is tempered
    (`switching_sweep`); evaluation always infers at 1.

    `tied` (set by the architecture's schedule): the K states share one dynamics, so the model is an LDS. Local
    inference runs with one state and no discrete log-potentials (q(z) plays no part, its KL is 0); the SVI step
    moves every state's q(A_k, Q_k) to the same target and leaves q(pi0), q(Pi) at their prior. The first stage
    of the AR-HMM start (`start_from_ar_hmm`).
    """

    Statistics = SwitchingStatistics

    def __init__(self, num_states: int, latent_dim: int, max_iter: int = 20, tol: float = 1e-2,
                 prior_alpha: float = 1.0, stickiness: float = 10.0, init_dynamics_scale: float = 0.5,
                 revive_below: float = 0.02, inference: str = "sequential"):
        super().__init__()
        if inference not in METHODS:
            raise ValueError(f"inference must be one of {METHODS}, got {inference!r}")
        for name, value in [("num_states", num_states), ("latent_dim", latent_dim), ("max_iter", max_iter)]:
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name, value in [("prior_alpha", prior_alpha), ("tol", tol)]:
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if stickiness < 0:
            raise ValueError(f"stickiness must be >= 0, got {stickiness}")
        if not 0 <= revive_below < 1:
            raise ValueError(f"revive_below must be in [0, 1), got {revive_below}")
        self.num_states, self.latent_dim = num_states, latent_dim
        self.max_iter, self.tol, self.inference = max_iter, tol, inference
        K, n, f64 = num_states, latent_dim, torch.float64
        self.add_global_factor("initial_state", DIRICHLET, dirichlet.alpha_to_natural(
            torch.full((K,), prior_alpha, dtype=f64)))
        self.add_global_factor("transitions", DIRICHLET, dirichlet.alpha_to_natural(
            prior_alpha + stickiness * torch.eye(K, dtype=f64)))
        self.add_global_factor("niw", NIW, initial_state_prior(n))
        prior = dynamics_prior(n, K)
        init_M = torch.eye(n, dtype=f64) + init_dynamics_scale * torch.randn(K, n, n, dtype=f64) / math.sqrt(n)
        self.add_global_factor("mniw", MNIW, prior, dynamics_prior(n, K, M=init_M))
        self.revive_below = revive_below
        self.tied = False
        #: the z-step's temperature in training (set by the architecture's schedule; 1 in eval)
        self.register_buffer("temperature", torch.ones((), dtype=f64), persistent=False)
        self.register_buffer("revivals", torch.zeros((), dtype=torch.long))
        self.register_buffer("usage", torch.full((K,), 1.0 / K, dtype=f64))
        self._register_load_state_dict_pre_hook(_usage_of_old_checkpoints, with_module=True)

    @torch.no_grad()
    def natural_gradient_step(self, statistics: SwitchingStatistics, num_train: int, rho: float,
                              taken: torch.Tensor | None = None) -> None:
        """The SVI step of every factor, then `revive_unused_state` (none where `taken` is False: a skipped
        step changes nothing)."""
        super().natural_gradient_step(statistics, num_train, rho, taken)
        if self.revive_below > 0 and not self.tied:
            batch_usage = statistics.mniw.nu / statistics.mniw.nu.sum()
            usage = (1 - rho) * self.usage + rho * batch_usage
            self.usage.copy_(usage if taken is None else torch.where(taken, usage, self.usage))
            self.revive_unused_state(statistics.revive, num_train / statistics.count, taken)

    @torch.no_grad()
    def revive_unused_state(self, worst: MNIWNatural, scale: torch.Tensor | float,
                            taken: torch.Tensor | None = None) -> None:
        """The least used state, if its `usage` (share of the frames, averaged over batches with the SVI step
        size, (K,)) fell below revive_below, restarts with q(A, Q) fitted to the batch's worst-explained steps
        (`worst`: the MNIW statistics of the 1/K of the steps with the lowest expected log-potential
        E_q(z)[l_t], counted as that share of the data set: prior + scale * their statistics), its row and
        column of q(transitions) those of a typical state (the mean self- and switch counts: otherwise the few
        counts into a dead state keep every path out of it), and usage 1/K. Like k-means++
        seeding a centre where the others fit worst: without it, the state that explains a batch best early
        in training, before the latents mean anything, takes every frame for good, the others fall back to the
        broad prior and never fit better; a state restarted as a perturbed copy of the best one fits no frame
        better than it. One state per step; the usage average spares a state whose frames a batch happens to
        lack. Masked: no host synchronisation."""
        k = self.usage.argmin()
        revive = self.usage[k] < self.revive_below
        if taken is not None:
            revive = revive & taken
        prior, q = self.natural("mniw", prior=True), self.natural("mniw")
        fitted = [prior_value[k] + scale * statistic for prior_value, statistic in zip(prior, worst)]
        self.set_natural("mniw", MNIWNatural(*(value.index_put((k,), torch.where(revive, new, value[k]))
                                              for value, new in zip(q, fitted))))
        transitions = self.natural("transitions")  # a typical state's row and column: entering it costs no more
        stay = torch.eye(len(transitions), dtype=torch.bool, device=transitions.device)
        typical = torch.where(stay, transitions.diagonal().mean(), transitions[~stay].mean())
        reset = (torch.arange(len(transitions), device=k.device) == k)
        reset = reset[:, None] | reset[None, :]
        self.set_natural("transitions", torch.where(revive & reset, typical, transitions))
        self.usage[k] = torch.where(revive, 1.0 / len(self.usage), self.usage[k])
        self.revivals += revive.long()

    @torch.no_grad()
    def start_from_ar_hmm(self, mean: torch.Tensor, moments: StepMoments, steps: torch.Tensor, restarts: int,
                          max_iter: int, generator: torch.Generator) -> ARHMMFit:
        """Empirical Bayes, then an AR(1)-HMM. The dynamics' prior becomes one AR fit to every step of the latent
        trajectories q(x) of the whole training set (`pooled_dynamics_prior`, as MoSeq centres its prior: a
        state with few steps falls back to the data's typical dynamics and noise, not to the latents' prior
        scale); then q(pi0), q(Pi) and every q(A_k, Q_k) are set to prior + the expected counts of an AR(1)-HMM
        fitted by variational EM (`fit_ar_hmm`, started from the k-means of the steps of the means): the fixed
        point of SVI with those q(z). Trajectories: means (N, T, n), their step moments and the real steps
        (N, T-1). Usage restarts at the fitted shares. Returns the fit."""
        self.set_natural("mniw", pooled_dynamics_prior(moments, steps, self.num_states), prior=True)
        prior = ARHMMPrior(*(self.natural(name, prior=True) for name in ("initial_state", "transitions", "mniw")))
        fit = fit_ar_hmm(moments, step_features(mean), prior, steps, restarts, max_iter, generator=generator)
        self.set_natural("initial_state", prior.initial_state + fit.initial_state)
        self.set_natural("transitions", prior.transitions + fit.transitions)
        self.set_natural("mniw", MNIWNatural(*(p + c for p, c in zip(prior.dynamics, fit.dynamics))))
        self.usage.copy_(fit.dynamics.nu / fit.dynamics.nu.sum())
        return fit

    def potentials(self, stats: dict[str, Any]) -> SwitchingPotentials:
        return SwitchingPotentials(stats["initial_state"], stats["transitions"],
                                   expected_lds_potentials(stats["niw"], stats["mniw"]))

    def infer(self, potentials: SwitchingPotentials, node_J: torch.Tensor, node_h: torch.Tensor,
              num_samples: int, mask: torch.Tensor | None = None) -> SwitchingPosterior:
        within = chains_cut(mask)
        if self.tied:
            potentials = one_state(potentials)
        return switching_meanfield(potentials, node_J, node_h, num_samples, self.max_iter, self.tol, self.inference,
                                   within, self.temperature if self.training else 1.0)

    def statistics(self, post: SwitchingPosterior) -> SwitchingStatistics:
        """Initial state: sum_b q(z_1); transitions: sum_b,t q(z_t, z_t+1); NIW as SVAE-LDS; MNIW_k:
        sum_b,t q(z_t = k) (E x_t x_t^T, E x_t x_t+1^T, E x_t+1 x_t+1^T, 1); over the steps inside each chain."""
        marginals, pairs = post.states.marginals.detach(), post.states.pair_marginals.detach()
        steps = post.x.step_weights()
        initial = initial_state_statistics(post.x)
        if self.tied:  # one state: its dynamics statistics for every state, no counts for q(pi0), q(Pi)
            K = self.num_states
            dynamics = MNIWNatural(*(value.expand(K, *value.shape[1:]) for value in dynamics_statistics(
                post.x, marginals[:, :-1] if steps is None else marginals[:, :-1] * steps[..., None])))
            return SwitchingStatistics(marginals.new_zeros(K), marginals.new_zeros(K, K), initial, dynamics,
                                       initial.kappa, None)
        if steps is not None:
            marginals = torch.cat([marginals[:, :-1] * steps[..., None], marginals[:, -1:]], 1)
            pairs = pairs * steps[..., None, None]
        revive = None
        if self.revive_below > 0:
            worst = self.worst_steps(post, steps)[..., None]  # (B, T-1, 1)
            revive = MNIWNatural(*(value[0] for value in dynamics_statistics(post.x, worst)))
        return SwitchingStatistics(marginals[:, 0].sum(0), pairs.sum((0, 1)), initial,
                                   dynamics_statistics(post.x, marginals[:, :-1]), initial.kappa, revive)

    def worst_steps(self, post: SwitchingPosterior, steps: torch.Tensor | None) -> torch.Tensor:
        """(B, T-1) weights: 1 on the 1/K of the steps inside the chains (`steps`, `step_weights`; None: all)
        with the lowest expected pair log-potential E_q(z)[l_t] (the steps the states explain worst), else 0."""
        fit = (post.states.marginals[:, :-1] * post.pair.detach()).sum(-1)  # (B, T-1)
        inside = torch.ones_like(fit) if steps is None else steps
        fit = torch.where(inside > 0, fit, torch.inf).flatten()
        worst = torch.zeros_like(fit)
        worst[torch.topk(fit, max(1, fit.numel() // self.num_states), largest=False).indices] = 1.0
        return worst.view_as(inside) * inside

    def posterior_log_prob(self, post: SwitchingPosterior, x: torch.Tensor) -> torch.Tensor:
        return post.x.log_prob(x)

    def prior_log_prob(self, potentials: SwitchingPotentials, x: torch.Tensor,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x) = init(x_1) + log sum_z p(z) prod_t p_{z_t}(x_t+1 | x_t), z summed out by the forward
        algorithm, for paths x (S, B, T, n), chains cut after the last real frame of `mask` (B, T): (S, B)."""
        within = chains_cut(mask)
        second = x.unsqueeze(-1) * x.unsqueeze(-2)
        cross = x[..., :-1, :].unsqueeze(-1) * x[..., 1:, :].unsqueeze(-2)
        pair = potentials.pair_log_potentials(second, cross, within)
        node = torch.cat([pair, torch.zeros_like(pair[..., :1, :])], -2)
        return (initial_log_potential(potentials.states, x[..., 0, :])
                + hmm_log_normalizer(potentials.log_init, potentials.transition_log_potentials(within), node))

    def forecast(self, post: SwitchingPosterior, horizon: int, num_samples: int) -> torch.Tensor:
        """z and x at the last frame from q(z) q(x) (the posterior's first `num_samples` samples), then
        z_t+1 ~ E[Pi][z_t] and x_t+1 = A_{z_t} x_t + eps, eps ~ N(0, Q_{z_t}), at the point estimate of the
        dynamics (`chain.point_dynamics`): (S, B, H, n)."""
        state = torch.multinomial(post.states.marginals[:, -1], num_samples, replacement=True).T  # (S, B)
        return simulate_dynamics(post.samples[:num_samples, :, -1], *point_dynamics(self.natural("mniw")), horizon,
                                 state, self.transition_matrix())

    def diagnostics(self, post: SwitchingPosterior) -> dict[str, torch.Tensor]:
        usage = post.states.marginals.detach().mean((0, 1))
        return {"states_in_use": (usage > 0.05).sum().double(),
                "meanfield_iters": post.iterations.double()}

    def transition_matrix(self) -> torch.Tensor:
        """E[Pi] (K, K), rows summing to 1."""
        alpha = dirichlet.natural_to_alpha(self.natural("transitions"))
        return alpha / alpha.sum(-1, keepdim=True)


INITS = ("random", "ar_hmm")


def one_state(potentials: SwitchingPotentials) -> SwitchingPotentials:
    """The first state's dynamics alone, with zero discrete log-potentials: the tied model's (an LDS)."""
    return SwitchingPotentials(torch.zeros_like(potentials.log_init[:1]),
                               torch.zeros_like(potentials.log_trans[:1, :1]),
                               potentials.states._replace(**{field: getattr(potentials.states, field)[:1] for field in
                                                             ("J11", "J12", "J22", "pair_const")}))


def _segmentation(score: Callable[[torch.Tensor, torch.Tensor], float]) -> Callable[[PerExample], float]:
    """Reduction: `score`(true labels, most likely states) over every labelled real frame of the split."""

    def reduce(per_example: PerExample) -> float:
        labels = per_example["frame_labels"]
        keep = labels >= 0
        return score(labels[keep], per_example["state_probs"].argmax(-1)[keep])

    return reduce


@ARCHITECTURES.register("SVAE-SLDS")
class SVAESLDS(SequenceSVAE):
    """Structured VAE whose latent sequence is a switching LDS (`SwitchingLinearDynamicalSystem`): K discrete
    states select the dynamics of the n-dimensional x_t; recognition, decoder and prediction as SVAE-LDS.
    Batches {"x": (B, T, D)}, with "mask" (B, T) for variable lengths, "clean" (B, T, D) for the prediction
    metrics, "labels" (B, T) (per-frame labels, -1 for none) for the segmentation metrics and "sequence" (B,)
    (the example's sequence index) for their per-sequence breakdown in test.py.

    Args (besides SVAE-LDS's):
        num_states: K.
        max_iter, tol: mean-field sweeps without gradient, and the tolerance on the batch-mean local KL (nats).
        prior_alpha, stickiness: Dirichlet priors on pi0 (alpha) and on each row of Pi (alpha, plus stickiness
            on the diagonal).
        init_dynamics_scale: spread of the initial dynamics means of q(theta) around I.
        revive_below: after the SVI step, the least used state restarts fitted to the batch's worst-explained
            steps if its share of the frames, averaged over batches, is below this (0: never).
        kl_warmup_epochs: the local KL's weight in the training loss rises from 0 to 1 over this many epochs.
        init: how the discrete layer starts. "random": q(theta) at the prior, the dynamics means spread by
            init_dynamics_scale. "ar_hmm" (SVAE.md section 8): the first `init_epochs` epochs train with the
            states tied (an LDS); then, before the next epoch, the dynamics' prior is centred on one AR fit to
            the training set's q(x), and an AR(1)-HMM fitted to it by variational EM (`init_restarts` starts of
            at most `init_iters` EM steps, the highest bound kept) sets q(pi0), q(Pi) and every q(A_k, Q_k);
            then joint SVI (`SwitchingLinearDynamicalSystem.start_from_ar_hmm`).
        anneal_temperature, anneal_epochs: q(z)'s temperature in training starts at anneal_temperature (>= 1)
            and falls linearly to 1 over the first anneal_epochs epochs with untied states (after the AR-HMM
            fit with init: ar_hmm); the loss is then -(ELBO + (temperature - 1) H(q(z))), the ELBO exactly at
            1 (`slds_inference`). 1 or 0 epochs: no annealing.
        figure_sequences: sequences drawn in the segmentation figures.
        label_names, channel_names, sequence_names, frame_rate: what the data loader knows (set by the
            framework), for the figures and the per-sequence results.
    """

    metrics = SequenceSVAE.metrics + (
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

    def __init__(self, data_shape: tuple[int, int], num_train: int, num_states: int = 3, latent_dim: int = 4,
                 hidden_dims: list[int] = (50,), activation: str = "tanh", init_scale: float = 1e-2,
                 num_samples: int = 1, eval_samples: int = 10, rho: float = 0.02, inference: str = "sequential",
                 prefix_len: int = 25, horizon: int = 20, figure_samples: int = 3, max_iter: int = 20,
                 tol: float = 1e-2, prior_alpha: float = 1.0, stickiness: float = 10.0,
                 init_dynamics_scale: float = 0.5, revive_below: float = 0.02, prediction_samples: int = 100,
                 kl_warmup_epochs: int = 0,
                 likelihood: Literal["gaussian", "sigmoid_gaussian", "bernoulli"] = "sigmoid_gaussian",
                 init: Literal["random", "ar_hmm"] = "random", init_epochs: int = 10, init_restarts: int = 5,
                 init_iters: int = 50, anneal_temperature: float = 1.0, anneal_epochs: int = 0,
                 figure_sequences: int = 3, frames_per_example: float | None = None,
                 label_names: tuple[str, ...] | None = None, channel_names: tuple[str, ...] | None = None,
                 sequence_names: tuple[str, ...] | None = None, frame_rate: float | None = None):
        def make_pgm() -> SwitchingLinearDynamicalSystem:
            return SwitchingLinearDynamicalSystem(num_states, latent_dim, max_iter, tol, prior_alpha, stickiness,
                                                  init_dynamics_scale, revive_below, inference)

        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        for name, value in [("init_epochs", init_epochs), ("init_restarts", init_restarts),
                            ("init_iters", init_iters)]:
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if anneal_temperature < 1 or anneal_epochs < 0:
            raise ValueError(f"anneal_temperature must be >= 1 and anneal_epochs >= 0, got {anneal_temperature} "
                             f"and {anneal_epochs}")
        self.init, self.init_epochs = init, init_epochs
        self.anneal_temperature, self.anneal_epochs = anneal_temperature, anneal_epochs
        self.init_restarts, self.init_iters = init_restarts, init_iters
        super().__init__(make_pgm, data_shape, num_train, latent_dim, hidden_dims, activation, init_scale, rho,
                         num_samples, eval_samples, prefix_len, horizon, figure_samples, kl_warmup_epochs, likelihood,
                         frames_per_example, prediction_samples)
        if figure_sequences < 1:
            raise ValueError(f"figure_sequences must be >= 1, got {figure_sequences}")
        self.visualization_size = figure_sequences
        self.label_names, self.channel_names, self.sequence_names = label_names, channel_names, sequence_names
        self.frame_rate = frame_rate
        if init == "ar_hmm":  # tied from the start; the AR-HMM's k-means draws saved with the model
            self.pgm.set_natural("mniw", self.pgm.natural("mniw", prior=True))
            self.register_buffer("init_seed", torch.randint(2 ** 62, ()))
        self.update_schedule()

    def update_schedule(self) -> None:
        """Besides the KL warm-up: the states are tied during the first stage of the AR-HMM start; q(z)'s
        temperature falls from anneal_temperature to 1 over the first anneal_epochs untied epochs."""
        super().update_schedule()
        self.pgm.tied = self.init == "ar_hmm" and self.epochs_done < self.init_epochs
        untied = self.epochs_done - (self.init_epochs if self.init == "ar_hmm" else 0)
        done = 1.0 if self.anneal_epochs == 0 else min(1.0, max(0, untied) / self.anneal_epochs)
        self.pgm.temperature.fill_(self.anneal_temperature + (1.0 - self.anneal_temperature) * done)

    def schedule_values(self) -> dict[str, float]:
        """Besides the KL weight, with the AR-HMM start: 1 while the states are tied, 0 after the fit; with
        annealing: q(z)'s temperature."""
        values = super().schedule_values()
        if self.init == "ar_hmm":
            values["states_tied"] = float(self.pgm.tied)
        if self.anneal_temperature != 1 and self.anneal_epochs > 0:
            values["z_temperature"] = self.pgm.temperature.item()
        return values

    def training_kl(self, post: SwitchingPosterior) -> torch.Tensor:
        """The tempered objective's KL term: KL - (temperature - 1) H(q(z)) (B,); KL itself at temperature 1."""
        return post.kl - (self.pgm.temperature - 1) * post.z_entropy

    def begin_epoch(self, epoch: int, training_set: Callable[[], Iterable[dict[str, torch.Tensor]]]) -> str | None:
        """Before the epoch after the tied stage of the AR-HMM start: q(x) of every training example under the
        tied model (an LDS), then `start_from_ar_hmm` on their moments."""
        if self.init != "ar_hmm" or epoch != self.init_epochs + 1:
            return None
        was_training = self.training
        self.eval()
        with torch.no_grad():
            potentials = one_state(self.expected_globals().potentials)
            parts = []
            for batch in training_set():
                x = self.infer(self.observations(batch), potentials, 0, self.observed_nodes(batch)).x
                steps = x.step_weights()
                parts.append((x.mean, *StepMoments.of_chain(x), torch.ones_like(x.mean[:, 1:, 0]) if steps is None
                              else steps))
            mean, *moments, steps = (torch.cat(part) for part in zip(*parts))
            generator = torch.Generator(mean.device).manual_seed(int(self.init_seed))
            fit = self.pgm.start_from_ar_hmm(mean, StepMoments(*moments), steps, self.init_restarts, self.init_iters,
                                             generator)
        self.train(was_training)
        shares = ", ".join(f"{float(share):.2f}" for share in self.pgm.usage)
        return (f"AR-HMM start: {self.init_restarts} restarts on {len(mean)} training examples, best bound "
                f"{fit.bound:.1f} nats after {fit.iterations} EM steps; state shares {shares}")

    def evaluate_more(self, batch: dict[str, torch.Tensor], y: torch.Tensor, post: SwitchingPosterior,
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
