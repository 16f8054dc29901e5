"""`--optimizer omoe`: AdamW whose expert updates are made orthogonal to the other experts'
input subspaces in alternating phases (Liu et al. 2023, arXiv 2310.09762; OWM, Zeng et al. 2019)."""

import ast
import logging
from dataclasses import dataclass, field
from typing import Any, List, Optional

import torch
import torch.nn.functional as F
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.optim import FairseqOptimizer, register_optimizer
from omegaconf import II

from ..moe import EXPERT_AXIS_ATTR, EXPERT_INPUT_ATTR, EXPERT_LAYER_ATTR, expert_weight_key
from .projector import (
    compress,
    direction_mixing,
    expert_factors,
    removed_part,
    update_products,
)

logger = logging.getLogger(__name__)

MISSING_TASK = (
    "--optimizer omoe was stepped without a phase: its accumulating/orthogonal schedule is run "
    "by the alternating task. Train with --task omoe_sentence_prediction (or call "
    "set_phase() before every step when driving the optimizer yourself)."
)


@dataclass
class OMoEConfig(FairseqDataclass):
    omoe_betas: Any = field(default=(0.9, 0.999), metadata={"help": "AdamW betas"})
    omoe_eps: float = field(default=1e-8, metadata={"help": "AdamW epsilon"})
    weight_decay: float = field(default=0.0, metadata={"help": "decoupled weight decay"})
    omoe_alpha: float = field(
        default=0.01,
        metadata={
            "help": "OWM regulariser: an input direction carrying a fraction lambda of an "
            "expert's (unit-normalised) input energy keeps alpha/(lambda+alpha) of the update"
        },
    )
    omoe_accumulate_steps: int = field(
        default=10, metadata={"help": "updates per cycle with plain AdamW, accumulating statistics"}
    )
    omoe_orthogonal_steps: int = field(
        default=10, metadata={"help": "updates per cycle with projected expert updates"}
    )
    omoe_mode: ChoiceEnum(["joint", "average"]) = field(
        default="joint",
        metadata={
            "help": "other-experts projector: joint = orthogonal to the span of all other "
            "experts' inputs; average = the mean of the other experts' projectors"
        },
    )
    omoe_project: ChoiceEnum(["update", "gradient"]) = field(
        default="update",
        metadata={"help": "project AdamW's final update (default) or the gradient before AdamW"},
    )
    omoe_stat: ChoiceEnum(["mean", "pca", "tokens"]) = field(
        default="mean",
        metadata={
            "help": "summary of an update's routed inputs: their mean (OWM), their top "
            "--omoe-stat-rank principal directions, or every routed token"
        },
    )
    omoe_stat_rank: int = field(
        default=4, metadata={"help": "principal directions per update with --omoe-stat pca"}
    )
    omoe_max_rank: int = field(
        default=16,
        metadata={"help": "rank kept of each expert's input statistics (projector memory)"},
    )
    omoe_space: ChoiceEnum(["inputs", "centred", "outputs", "deltas"]) = field(
        default="deltas",
        metadata={
            "help": "what an expert's update is made orthogonal to: the other experts' routed "
            "inputs (inputs, OWM), the same centred per expert (centred), their outputs "
            "(outputs, projected from the left), or their recent update directions (deltas)"
        },
    )
    omoe_max_gain: float = field(
        default=1.0,
        metadata={
            "help": "rescale each projected expert update back towards the norm it had before "
            "the projection, by at most this factor (1 = plain projection)"
        },
    )
    omoe_project_moment: bool = field(
        default=False,
        metadata={
            "help": "also project AdamW's first moment in orthogonal updates, so the removed "
            "component is not replayed in the next accumulating phase"
        },
    )
    omoe_forget: float = field(
        default=0.0,
        metadata={
            "help": "statistics carried into the next cycle, as a forgetting factor in [0, 1]: "
            "0 restarts them every cycle"
        },
    )
    lr: List[float] = II("optimization.lr")


@register_optimizer("omoe", dataclass=OMoEConfig)
class FairseqOMoE(FairseqOptimizer):
    def __init__(self, cfg: OMoEConfig, params) -> None:
        super().__init__(cfg)
        betas = cfg.omoe_betas
        betas = ast.literal_eval(betas) if isinstance(betas, str) else tuple(betas)
        self._optimizer = OMoE(
            params,
            **self.optimizer_config,
            betas=betas,
            alpha=cfg.omoe_alpha,
            accumulate_steps=cfg.omoe_accumulate_steps,
            orthogonal_steps=cfg.omoe_orthogonal_steps,
            mode=cfg.omoe_mode,
            project_what=cfg.omoe_project,
            stat=cfg.omoe_stat,
            stat_rank=cfg.omoe_stat_rank,
            max_rank=cfg.omoe_max_rank,
            forget=cfg.omoe_forget,
            space=cfg.omoe_space,
            max_gain=cfg.omoe_max_gain,
            project_moment=cfg.omoe_project_moment,
        )

    @property
    def optimizer_config(self) -> dict:
        """The hyper-parameters that a checkpoint's --optimizer-overrides may change."""
        return {
            "lr": self.cfg.lr[0],
            "eps": self.cfg.omoe_eps,
            "weight_decay": self.cfg.weight_decay,
        }


def _stat_dtype(p: torch.Tensor) -> torch.dtype:
    return torch.promote_types(p.dtype, torch.float32)


def _fold(stats: torch.Tensor, X: torch.Tensor, max_rank: int) -> Optional[torch.Tensor]:
    """An expert's statistics [dim, max_rank] with new columns X [dim, w] folded in, or None
    if X or the result is not finite (or the eigen-decomposition fails)."""
    if not torch.isfinite(X).all():
        return None
    try:
        folded = compress(torch.cat([stats, X], dim=1), max_rank)
    except torch.linalg.LinAlgError:
        return None
    return folded if torch.isfinite(folded).all() else None


SPACES = ("inputs", "centred", "outputs", "deltas")


def as_rows(W: torch.Tensor, space: str) -> torch.Tensor:
    """W [E, out, in] as [E, rows, dim] whose rows a statistics space's projector [dim x dim]
    acts on: W itself in the input spaces (right-multiplied), W^T for outputs
    (left-multiplied). Its own inverse."""
    return W.transpose(1, 2) if space == "outputs" else W


# What a changed setting does to a resumed run (see OMoE.load_state_dict).
_CHANGED = {
    "alpha": "projectors formed from the next switch on use the new value",
    "accumulate_steps": "the phase is recomputed from the update count with the new cycle, so "
    "this run may switch phase at other updates than the checkpointed run would have",
    "orthogonal_steps": "the phase is recomputed from the update count with the new cycle, so "
    "this run may switch phase at other updates than the checkpointed run would have",
    "stat": "the checkpointed statistics were summarised the old way; new updates fold in "
    "the new kind until the next cycle restarts them",
    "stat_rank": "the checkpointed statistics were summarised the old way; new updates fold "
    "in the new kind until the next cycle restarts them",
    "forget": "the statistics carried over at the next cycle boundary follow the new factor",
    "project_what": "orthogonal updates from now on follow the new rule",
    "max_gain": "orthogonal updates from now on follow the new rule",
    "project_moment": "orthogonal updates from now on follow the new rule",
    "mode": "the checkpointed projectors were formed the old way",
    "space": "the checkpointed statistics and projectors live in the old space",
    "max_rank": "the checkpointed statistics have the old rank",
}
_OPTION = {"project_what": "project"}  # setting -> --omoe-* option name, where they differ


class OMoE(torch.optim.AdamW):
    r"""AdamW with orthogonal expert updates.

    Expert weights are the stacked tensors tagged by the MoE layer (``moe_expert_axis``,
    ``moe_input``, ``moe_layer``); each is addressed as "{layer}.{fc1|fc2}". Training runs in
    cycles of ``accumulate_steps + orthogonal_steps`` updates, driven by the alternating
    task, which calls ``set_phase`` before every step:

    - accumulating: every parameter takes the AdamW update; the task hands over each
      update's summary X_e of what expert e saw (``accumulate``), folded into rank-limited
      statistics A_e with A_e A_e^T = sum of the X_e X_e^T (times ``forget`` per cycle
      boundary). C_e = A_e A_e^T / n_e is expert e's mean second moment. What is summarised
      is the ``space``: ``inputs`` (the routed inputs, OWM), ``centred`` (the same minus
      their mean per expert and micro-batch), ``outputs`` (the expert weight's outputs on
      its routed tokens). ``deltas`` keeps no statistics (below).
    - at the switch (``form_projectors``) every expert gets the factor of its other-experts
      projector: ``joint``: P_{-e} = alpha (sum_{j != e} C_j + alpha I)^{-1};
      ``average``: P_{-e} = (sum_j P_j - P_e) / (E - 1) with P_j = alpha (C_j + alpha I)^{-1}.
    - orthogonal: non-expert parameters and expert biases take the AdamW update; an expert
      weight's update dW_e (AdamW's final step, decay included, or with ``project_what =
      "gradient"`` its gradient before AdamW) is projected: dW_e P_{-e} in the input spaces
      (it barely moves, or does not move, the outputs for inputs the other experts saw),
      P_{-e} dW_e for ``outputs`` (it adds nothing along the other experts' output
      directions), and for ``deltas`` vec(dW_e) is projected away from the other experts'
      recent update directions (their AdamW first moments, flattened, read at every
      orthogonal step: no state of its own), so copies are pushed apart in weight space.
      With ``max_gain`` > 1 each expert's projected update is scaled back towards its
      unprojected norm (by at most max_gain): the direction changes, the step length not.
      With ``project_moment`` the experts' first moments are projected the same way, so
      the removed component is not replayed after the orthogonal phase.

    With only accumulating phases the parameters follow torch.optim.AdamW exactly.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        alpha: float = 0.01,
        accumulate_steps: int = 10,
        orthogonal_steps: int = 10,
        mode: str = "joint",
        project_what: str = "update",
        stat: str = "mean",
        stat_rank: int = 4,
        max_rank: int = 16,
        forget: float = 0.0,
        space: str = "deltas",
        max_gain: float = 1.0,
        project_moment: bool = False,
    ) -> None:
        # plain strings (fairseq hands over its ChoiceEnum values): they go into checkpoints
        mode, project_what, stat, space = map(str, (mode, project_what, stat, space))
        checks = (
            (alpha > 0, "--omoe-alpha must be > 0", alpha),
            (accumulate_steps >= 1, "--omoe-accumulate-steps must be >= 1", accumulate_steps),
            (orthogonal_steps >= 1, "--omoe-orthogonal-steps must be >= 1", orthogonal_steps),
            (mode in ("joint", "average"), "--omoe-mode must be joint or average", mode),
            (project_what in ("update", "gradient"), "--omoe-project must be update or gradient",
             project_what),
            (stat in ("mean", "pca", "tokens"), "--omoe-stat must be mean, pca or tokens", stat),
            (stat_rank >= 1, "--omoe-stat-rank must be >= 1", stat_rank),
            (max_rank >= 1, "--omoe-max-rank must be >= 1", max_rank),
            (0.0 <= forget <= 1.0, "--omoe-forget must be in [0, 1]", forget),
            (space in SPACES, f"--omoe-space must be one of {', '.join(SPACES)}", space),
            (max_gain >= 1.0, "--omoe-max-gain must be >= 1 (1 = no rescaling)", max_gain),
            (not (space == "centred" and stat == "mean"), "--omoe-space centred needs "
             "--omoe-stat pca or tokens (the mean of centred inputs is zero), got stat", stat),
        )
        for ok, message, value in checks:
            if not ok:
                raise ValueError(f"{message}, got {value!r}")
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self.settings = dict(
            alpha=alpha, accumulate_steps=accumulate_steps, orthogonal_steps=orthogonal_steps,
            mode=mode, project_what=project_what, stat=stat, stat_rank=stat_rank,
            max_rank=max_rank, forget=forget, space=space, max_gain=max_gain,
            project_moment=project_moment,
        )
        self.alpha, self.mode, self.project_what = alpha, mode, project_what
        self.accumulate_steps, self.orthogonal_steps = accumulate_steps, orthogonal_steps
        self.stat, self.stat_rank, self.max_rank, self.forget = stat, stat_rank, max_rank, forget
        self.space, self.max_gain, self.project_moment = space, max_gain, project_moment
        self.experts = {}  # "{layer}.{fc1|fc2}" -> stacked weight [E, out, in]
        for group in self.param_groups:
            for p in group["params"]:
                if hasattr(p, EXPERT_AXIS_ATTR):
                    if getattr(p, EXPERT_AXIS_ATTR) != 0 or p.dim() != 3:
                        raise ValueError("OMoE expects expert weights stacked as [E, out, in]")
                    key = expert_weight_key(
                        getattr(p, EXPERT_LAYER_ATTR), getattr(p, EXPERT_INPUT_ATTR)
                    )
                    self.experts[key] = p
        if not self.experts:
            raise ValueError(
                "--optimizer omoe found no expert weights to train: the model has no MoE layer "
                "(use an omoe_roberta model with --moe-freq >= 1, or --optimizer adam for a "
                "dense model). With --fp16 add --fp16-no-flatten-grads: flattened fp16 "
                "gradients are one tensor with no expert weights in it. A copy.deepcopy of the "
                "model also loses the expert tags (moe_expert_axis, moe_input, moe_layer)."
            )
        # projector maths in fp32 at least, whatever the parameters' precision; statistics
        # live in the space the projector acts on (deltas: none, its directions are read off
        # AdamW's state)
        self.stats = {} if space == "deltas" else {
            k: torch.zeros(p.size(0), as_rows(p, space).size(2), max_rank,
                           dtype=_stat_dtype(p), device=p.device)
            for k, p in self.experts.items()
        }
        self.stat_steps = {k: torch.zeros_like(v[:, 0, 0]) for k, v in self.stats.items()}
        self.factors: dict[str, torch.Tensor] = {}
        self.counters = {"cycles": 0, "projector_updates": 0, "skipped_stats": 0,
                         "skipped_projectors": 0, "empty_stats": 0}
        self.last_measured = {}  # "trace", "removed": last projector measurements, for logging
        self._measure_next = False  # measure the removed share on the next orthogonal step
        self.phase: Optional[str] = None

    # -- called by the alternating task ---------------------------------------------------

    @property
    def projectors_formed(self) -> bool:
        """Whether form_projectors has run (in this run or the checkpointed one)."""
        return self.counters["projector_updates"] > 0 and (self.space == "deltas"
                                                           or bool(self.factors))

    def set_phase(self, phase: str) -> None:
        """'accumulate' or 'orthogonal' for the next step (consumed by it)."""
        if phase not in ("accumulate", "orthogonal"):
            raise ValueError(f"unknown OMoE phase {phase!r}")
        self.phase = phase

    @torch.no_grad()
    def begin_cycle(self) -> None:
        """Scale the statistics by the forgetting factor (0 = start afresh)."""
        for key in self.stats:
            self.stats[key].mul_(self.forget**0.5)
            self.stat_steps[key].mul_(self.forget)
        self.counters["cycles"] += 1

    @torch.no_grad()
    def accumulate(self, step_stats: dict[str, torch.Tensor]) -> None:
        """Fold one update's summaries (key -> [E, dim, w]) into the statistics.

        An expert whose summary is all zero received no token on any worker (or only
        all-zero inputs): it is left as it is and counted (``counters["empty_stats"]``). A
        summary with NaN/Inf, or whose folded statistics would not be finite, is skipped and
        counted (``counters["skipped_stats"]``): one bad batch never reaches a projector,
        and training goes on."""
        for key, X in step_stats.items():
            stats = self.stats[key]
            X = X.to(stats)
            for e in range(stats.size(0)):
                if not X[e].any():
                    self.counters["empty_stats"] += 1
                    continue
                folded = _fold(stats[e], X[e], self.max_rank)
                if folded is None:
                    self.counters["skipped_stats"] += 1
                    continue
                stats[e] = folded
                self.stat_steps[key][e] += 1

    @torch.no_grad()
    def form_projectors(self) -> None:
        """Compute every expert's other-experts projector factor from the statistics.

        An expert whose factor cannot be formed (Cholesky failure even in float64, or a
        non-finite result) keeps the projector it had, the identity before the first one,
        and is counted (``counters["skipped_projectors"]``). ``deltas`` forms its
        projectors at every orthogonal step from the live first moments instead."""
        traces = []
        for key, stats in self.stats.items():
            mean_stats = stats / self.stat_steps[key].clamp(min=1.0).sqrt().view(-1, 1, 1)
            factors, ok = expert_factors(mean_stats, self.alpha, self.mode)
            if not ok.all():
                previous = self.factors.get(key, torch.zeros_like(factors))
                factors[~ok] = previous[~ok]
                self.counters["skipped_projectors"] += int((~ok).sum())
            self.factors[key] = factors
            traces.append(self._mean_trace(factors))
        self.counters["projector_updates"] += 1
        if traces:
            self.last_measured["trace"] = sum(traces) / len(traces)
        self._measure_next = True

    @property
    def skipped(self) -> int:
        """Statistics and projector updates skipped so far because of numerical faults."""
        return self.counters["skipped_stats"] + self.counters["skipped_projectors"]

    def _mean_trace(self, factors: torch.Tensor) -> float:
        """Mean over experts of trace(P_{-e}) / dim: 1 = projects nothing, 0 = everything."""
        E, dim = factors.shape[:2]
        norms = factors.square().sum(dim=(1, 2))  # ||Q_e||_F^2 = dim - trace(I - Q Q^T)
        if self.mode == "average" and E > 1:  # trace of (S - P_e) / (E - 1)
            norms = (norms.sum() - norms) / (E - 1)
        return float(1.0 - norms.mean() / dim)

    def _step_projections(self, active: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The other-experts projection of every active expert weight for this orthogonal
        step (none where an expert weight has no other expert or no direction yet)."""
        if self.space == "deltas":
            projections = {}
            for key, p in active.items():
                moment = self.state[p].get("exp_avg")
                if moment is None or p.size(0) == 1:  # no AdamW step yet, or no other expert
                    continue
                projection = _DirectionProjection(moment.to(_stat_dtype(p)).reshape(p.size(0), -1),
                                                  self.alpha, self.mode)
                if projection.finite:
                    projections[key] = projection
                else:
                    self.counters["skipped_projectors"] += p.size(0)
            return projections
        missing = [k for k in active if k not in self.factors]
        if missing:
            raise RuntimeError(
                f"OMoE orthogonal step before projectors were formed for {missing}: call "
                "form_projectors() at the switch from accumulating to orthogonal"
            )
        return {k: _Projection(self.factors[k].to(p.device), self.mode, self.space)
                for k, p in active.items() if self.factors[k].size(-1) > 0}

    # -- the update -----------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        if self.phase is None:
            raise RuntimeError(MISSING_TASK)
        orthogonal, self.phase = self.phase == "orthogonal", None
        active = {k: p for k, p in self.experts.items() if p.grad is not None}
        if not orthogonal or not active:
            return super().step(closure)
        projections = self._step_projections(active)
        measure = self._measure_next  # first orthogonal step of a cycle: log what is removed
        self._measure_next = False
        if self.project_what == "gradient":
            for key, projection in projections.items():
                grad = active[key].grad
                projected = projection.apply(grad.to(projection.dtype))
                grad.copy_(self._rescaled(projected, grad.to(projection.dtype)))
            loss = super().step(closure)
        else:
            loss = self._step_projecting_update(closure, active, projections, measure)
        if self.project_moment:
            for key, projection in projections.items():
                moment = self.state[active[key]]["exp_avg"]
                moment.copy_(projection.apply(moment.to(projection.dtype)))
        return loss

    def _step_projecting_update(self, closure, active, projections, measure):
        """AdamW, then each expert weight's update dW = new - old projected. Without
        rescaling, dW is never materialised: the projection removes
        removed(products(dW)), and the products are linear in dW and small."""
        keep_old = measure or self.max_gain > 1.0
        old = {k: active[k].detach().clone() for k in projections} if keep_old else {}
        before = {k: proj.products(active[k]) for k, proj in projections.items()}
        loss = super().step(closure)
        removed = []
        for key, projection in projections.items():
            p = active[key]
            change = tuple(a - b for a, b in zip(projection.products(p), before[key]))
            if not keep_old:
                projection.subtract(change, p)
                continue
            cut = projection.removed(change, p)
            delta = p.to(cut.dtype) - old[key].to(cut.dtype)
            if measure:
                removed.append(float(cut.norm() / delta.norm().clamp(min=1e-30)))
            if self.max_gain > 1.0:
                p.copy_((old[key].to(cut.dtype) + self._rescaled(delta - cut, delta)).to(p.dtype))
            else:
                p.sub_(cut.to(p.dtype))
        if removed:
            self.last_measured["removed"] = sum(removed) / len(removed)
        return loss

    def _rescaled(self, projected: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        """projected [E, ...] scaled per expert towards original's norm, by at most max_gain."""
        if self.max_gain == 1.0:
            return projected
        dims = tuple(range(1, projected.dim()))
        gain = original.norm(dim=dims) / projected.norm(dim=dims).clamp(min=1e-30)
        return projected * gain.clamp(1.0, self.max_gain).view(-1, *[1] * len(dims))

    # -- checkpointing: statistics, projectors and counters are optimizer state ---------------

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["omoe"] = {
            "stats": dict(self.stats),
            "stat_steps": dict(self.stat_steps),
            "factors": dict(self.factors),
            "counters": dict(self.counters),
            "settings": dict(self.settings),
        }
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        omoe = state_dict.pop("omoe", None)
        if omoe is None:
            raise ValueError(
                "this optimizer state has no OMoE statistics (was it saved by another "
                "optimizer?); resume with --reset-optimizer to start them afresh"
            )
        self._report_changed_settings(omoe.get("settings"))
        if set(omoe["stats"]) != set(self.stats):
            raise ValueError(
                f"OMoE state has statistics for expert weights {sorted(omoe['stats'])}, this "
                f"model and --omoe-space need {sorted(self.stats)}; resume with "
                "--reset-optimizer to start them afresh"
            )
        self._check_loaded(omoe)
        super().load_state_dict(state_dict)
        for key in self.stats:
            self.stats[key] = omoe["stats"][key].to(self.stats[key])
            self.stat_steps[key] = omoe["stat_steps"][key].to(self.stat_steps[key])
        self.factors = {k: v.to(self.stats[k]) for k, v in omoe["factors"].items()}
        self.counters.update(omoe["counters"])

    def _report_changed_settings(self, saved: Optional[dict]) -> None:
        """Say, on resume, which OMoE settings differ from the checkpoint's and what that does
        (those that change the state's shapes are then refused by `_check_loaded`)."""
        if saved is None:
            logger.warning("the checkpoint's OMoE state predates stored settings: a change of "
                           "--omoe-* options since it was saved cannot be detected")
            return
        for name, value in self.settings.items():
            if name in saved and saved[name] != value:
                option = "--omoe-" + _OPTION.get(name, name).replace("_", "-")
                logger.warning(f"{option} changed since the checkpoint ({saved[name]!r} -> "
                               f"{value!r}): {_CHANGED[name]}")

    def _check_loaded(self, omoe: dict) -> None:
        """Refuse checkpointed OMoE state that does not fit this model or is not finite, so
        that a corrupt or foreign checkpoint cannot plant a bad projector."""
        for part in ("stats", "stat_steps", "factors"):
            for key, value in omoe[part].items():
                if not isinstance(value, torch.Tensor) or key not in self.stats:
                    fits = False
                elif part == "factors":  # what expert_factors returns for this mode and rank
                    E, dim, r = self.stats[key].shape
                    width = 0 if E == 1 else r if self.mode == "average" else (E - 1) * r
                    fits = value.shape == (E, dim, width)
                else:
                    fits = value.shape == getattr(self, part)[key].shape
                if not fits or not torch.isfinite(value).all():
                    problem = ("does not fit the model, --omoe-space, --omoe-mode and "
                               "--omoe-max-rank" if not fits else "is not finite")
                    raise ValueError(
                        f"the checkpoint's OMoE {part} for expert weight {key} {problem}; "
                        "resume with --reset-optimizer to start the statistics afresh"
                    )


class _Projection:
    """One stacked expert weight's other-experts projection in a statistics space: the
    factors [E, dim, R] of `expert_factors`, acting on `as_rows` of the weight."""

    def __init__(self, factors: torch.Tensor, mode: str, space: str) -> None:
        self.factors, self.mode, self.space = factors, mode, space
        self.dtype = factors.dtype

    def products(self, W: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The small products of W [E, out, in] with the factors (linear in W)."""
        return update_products(as_rows(W.to(self.dtype), self.space), self.factors, self.mode)

    def removed(self, products: tuple[torch.Tensor, ...], like: torch.Tensor) -> torch.Tensor:
        """What the projection removes from the W whose `products` these are, shaped like it."""
        return as_rows(removed_part(products, self.factors, self.mode), self.space)

    def apply(self, W: torch.Tensor) -> torch.Tensor:
        """W [E, out, in] projected."""
        return W - self.removed(self.products(W), W)

    def subtract(self, products: tuple[torch.Tensor, ...], W: torch.Tensor) -> None:
        """W -= what the projection removes from the W' whose `products` these are."""
        W.sub_(self.removed(products, W).to(W.dtype))


class _DirectionProjection(_Projection):
    """One stacked expert weight's projection away from the other experts' directions in
    weight space (`--omoe-space deltas`): the experts' first moments [E, out * in] made unit
    rows (a copy: AdamW's step then updates the moments in place) and the mixing matrices of
    `direction_mixing`. Every pass over weight-sized tensors counts here (one orthogonal
    step makes five), so finiteness is read off the E x E Gram matrix, which a NaN or Inf
    anywhere in the moments reaches."""

    def __init__(self, moments: torch.Tensor, alpha: float, mode: str) -> None:
        gram = moments @ moments.T
        self.finite = bool(torch.isfinite(gram).all())
        if not self.finite:
            return
        inv_norms = gram.diagonal().sqrt().clamp(min=1e-12).reciprocal()  # F.normalize's eps
        self.directions = moments * inv_norms[:, None]
        self.dtype = moments.dtype
        unit_gram = gram * inv_norms[:, None] * inv_norms[None, :]
        self.mixing = direction_mixing(unit_gram, alpha, mode).to(self.dtype)

    def products(self, W: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (W.to(self.dtype).reshape(W.size(0), -1) @ self.directions.T,)  # [E, E]

    def _coefficients(self, products: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return torch.einsum("eij,ej->ei", self.mixing, products[0])  # [E, E]

    def removed(self, products: tuple[torch.Tensor, ...], like: torch.Tensor) -> torch.Tensor:
        return (self._coefficients(products) @ self.directions).reshape(like.shape)

    def subtract(self, products: tuple[torch.Tensor, ...], W: torch.Tensor) -> None:
        if W.dtype != self.dtype or not W.is_contiguous():
            return super().subtract(products, W)
        W.view(W.size(0), -1).addmm_(self._coefficients(products), self.directions, alpha=-1)
