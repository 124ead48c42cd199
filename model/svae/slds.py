"""SVAE-SLDS: a switching linear dynamical system over the latents, per-frame recognition potentials and a
per-frame diagonal-Gaussian decoder (SVAE.md section 6). Local inference (structured mean field) is in
`slds_inference.py`.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Literal, NamedTuple

import torch

from model.expfam.mniw import MNIWNatural
from model.expfam.niw import NIWNatural
from model.registry import ARCHITECTURES
from model.svae.ar_hmm import ARHMMFit, ARHMMPrior, StepMoments, fit_ar_hmm, pooled_dynamics_prior, step_features
from model.svae.chain import dynamics_prior, dynamics_statistics, initial_state_prior, initial_state_statistics, \
    point_dynamics, simulate_dynamics
from model.svae.discrete_states import MarkovStates, SegmentingSVAE, chains_cut
from model.svae.graphical_model import MNIW, NIW
from model.svae.hmm import hmm_log_normalizer
from model.svae.kalman import METHODS, expected_lds_potentials, initial_log_potential
from model.svae.slds_inference import SwitchingPosterior, SwitchingPotentials, switching_meanfield


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


class SwitchingLinearDynamicalSystem(MarkovStates):
    """z_1 ~ Cat(pi0), z_t+1 | z_t ~ Cat(Pi[z_t]); x_1 ~ N(mu0, Sigma0), x_t+1 = A_{z_t} x_t + eps,
    eps ~ N(0, Q_{z_t}): K discrete states and one n-dimensional latent per frame. Global factors
    "initial_state" (Dirichlet (K,)), "transitions" (Dirichlet, one per row (K, K)), "niw" (mu0, Sigma0) and
    "mniw" (A_k, Q_k, batch K).

    Priors: the discrete states' as `MarkovStates` (which also revives unused states, fitting their dynamics
    to the worst-explained steps); NIW and MNIW as SVAE-LDS (`chain.py`). q(theta) starts at the prior except
    the dynamics means, M_k = I + init_dynamics_scale * N(0, I / n) (distinct states, or every state stays the
    same). Local inference: `switching_meanfield`.

    `temperature` (a 0-d buffer the architecture's schedule sets, >= 1): with `annealed`, q(z) is tempered in
    training (`switching_sweep`), at 1 too once annealing ends (one compiled graph); evaluation never is.

    `tied` (set by the architecture's schedule): the K states share one dynamics, so the model is an LDS. Local
    inference runs with one state and no discrete log-potentials (q(z) plays no part, its KL is 0); the SVI step
    moves every state's q(A_k, Q_k) to the same target and leaves q(pi0), q(Pi) at their prior. The first stage
    of the AR-HMM start (`start_from_ar_hmm`).
    """

    Statistics = SwitchingStatistics
    emission = "mniw"

    def __init__(self, num_states: int, latent_dim: int, max_iter: int = 20, tol: float = 1e-2,
                 prior_alpha: float = 1.0, stickiness: float = 10.0, init_dynamics_scale: float = 0.5,
                 revive_below: float = 0.02, inference: str = "sequential"):
        super().__init__()
        if inference not in METHODS:
            raise ValueError(f"inference must be one of {METHODS}, got {inference!r}")
        for name, value in [("num_states", num_states), ("latent_dim", latent_dim), ("max_iter", max_iter)]:
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if tol <= 0:
            raise ValueError(f"tol must be > 0, got {tol}")
        self.latent_dim = latent_dim
        self.max_iter, self.tol, self.inference = max_iter, tol, inference
        K, n, f64 = num_states, latent_dim, torch.float64
        self.add_markov_states(num_states, prior_alpha, stickiness, revive_below)
        self.add_global_factor("niw", NIW, initial_state_prior(n))
        prior = dynamics_prior(n, K)
        init_M = torch.eye(n, dtype=f64) + init_dynamics_scale * torch.randn(K, n, n, dtype=f64) / math.sqrt(n)
        self.add_global_factor("mniw", MNIW, prior, dynamics_prior(n, K, M=init_M))
        self.tied = False
        #: the z-step's temperature in training when `annealed` (set by the architecture's schedule)
        self.register_buffer("temperature", torch.ones((), dtype=f64), persistent=False)
        self.annealed = False

    def state_counts(self, statistics: SwitchingStatistics) -> torch.Tensor:
        return statistics.mniw.nu

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
                                   within, self.temperature if self.training and self.annealed else None)

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
        return self.worst_frames((post.states.marginals[:, :-1] * post.pair.detach()).sum(-1), steps)

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
        return {"states_in_use": self.states_in_use(post.states.marginals),
                "meanfield_iters": post.iterations.double()}


INITS = ("random", "ar_hmm")


def one_state(potentials: SwitchingPotentials) -> SwitchingPotentials:
    """The first state's dynamics alone, with zero discrete log-potentials: the tied model's (an LDS)."""
    return SwitchingPotentials(torch.zeros_like(potentials.log_init[:1]),
                               torch.zeros_like(potentials.log_trans[:1, :1]),
                               potentials.states._replace(**{field: getattr(potentials.states, field)[:1] for field in
                                                             ("J11", "J12", "J22", "pair_const")}))


@ARCHITECTURES.register("SVAE-SLDS")
class SVAESLDS(SegmentingSVAE):
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
        self.init_segmentation(figure_sequences, label_names, channel_names, sequence_names, frame_rate)
        self.pgm.annealed = anneal_temperature != 1 and anneal_epochs > 0
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
        if self.pgm.annealed:
            values["z_temperature"] = self.pgm.temperature.item()
        return values

    def training_kl(self, post: SwitchingPosterior) -> torch.Tensor:
        """The tempered objective's KL term: KL - (temperature - 1) H(q(z)) (B,); KL itself at temperature 1 and
        without annealing."""
        return post.kl if post.z_entropy is None else post.kl - (self.pgm.temperature - 1) * post.z_entropy

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
