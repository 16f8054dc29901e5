"""The OMoE optimizer: AdamW whose expert updates are made orthogonal to the other experts in
alternating phases (Liu et al. 2023, arXiv 2310.09762; OWM, Zeng et al. 2019). Its fairseq
options are in `fairseq_omoe`, the projector maths in `projector` and `projection`."""

from typing import Any, Optional

import torch

from .groups import EXPERT_GROUP, expert_weights, fused_kernel, regroup_saved, split_expert_groups
from .projection import DirectionProjection, Projection, as_rows, stat_dtype
from .projector import expert_factors, fold_columns, mean_trace
from .resume import check_loaded_state, report_changed_settings
from .settings import check_settings

MISSING_TASK = (
    "--optimizer omoe was stepped without a phase: its accumulating/orthogonal schedule is run "
    "by the alternating task. Train with --task omoe_sentence_prediction (or call "
    "set_phase() before every step when driving the optimizer yourself)."
)


class OMoE(torch.optim.AdamW):
    """AdamW with orthogonal expert updates (the algorithm: the README, *The algorithm as
    implemented*).

    Expert weights are the stacked tensors [E, out, in] tagged by the MoE layer, each
    addressed as "{layer}.{fc1|fc2}". The alternating task calls `set_phase` before every
    step. Accumulating steps are AdamW's; in the statistics spaces (inputs, centred,
    outputs) the task hands each update's summaries to `accumulate`, and `form_projectors`
    turns them into every expert's other-experts projector factor at the switch. Orthogonal
    steps project each expert weight's update away from the other experts (`deltas`: their
    AdamW first moments, read at every step); everything else takes the AdamW update. With
    only accumulating phases the parameters follow torch.optim.AdamW (its fused kernel) exactly.
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
        project: str = "update",
        stat: str = "mean",
        stat_rank: int = 4,
        max_rank: int = 16,
        forget: float = 0.0,
        space: str = "deltas",
        max_gain: float = 1.0,
        moment: str = "project",
        orthogonal_lr_scale: float = 1.0,
    ) -> None:
        # plain strings (fairseq hands over its ChoiceEnum values): they go into checkpoints
        mode, project, stat, space, moment = map(str, (mode, project, stat, space, moment))
        self.settings = dict(
            alpha=alpha, accumulate_steps=accumulate_steps, orthogonal_steps=orthogonal_steps,
            mode=mode, project=project, stat=stat, stat_rank=stat_rank, max_rank=max_rank,
            forget=forget, space=space, max_gain=max_gain, moment=moment,
            orthogonal_lr_scale=orthogonal_lr_scale,
        )
        check_settings(self.settings)
        groups, self._origin = split_expert_groups(params)
        super().__init__(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         fused=fused_kernel(groups))
        vars(self).update(self.settings)  # self.alpha, self.mode, ... as given
        self.experts = expert_weights(self.param_groups)  # "{layer}.{fc1|fc2}" -> [E, out, in]
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
                           dtype=stat_dtype(p), device=p.device)
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
                folded = fold_columns(stats[e], X[e], self.max_rank)
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
            traces.append(mean_trace(factors, self.mode))
        self.counters["projector_updates"] += 1
        if traces:
            self.last_measured["trace"] = sum(traces) / len(traces)
        self._measure_next = True

    @property
    def skipped(self) -> int:
        """Statistics and projector updates skipped so far because of numerical faults."""
        return self.counters["skipped_stats"] + self.counters["skipped_projectors"]

    def _step_projections(self, active: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The other-experts projection of every active expert weight for this orthogonal
        step (none where an expert weight has no other expert or no direction yet)."""
        if self.space == "deltas":
            projections = {}
            for key, p in active.items():
                moment = self.state[p].get("exp_avg")
                if moment is None or p.size(0) == 1:  # no AdamW step yet, or no other expert
                    continue
                projection = DirectionProjection(moment.to(stat_dtype(p)).reshape(p.size(0), -1),
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
        return {k: Projection(self.factors[k].to(p.device), self.mode, self.space)
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
        experts = [g for g in self.param_groups if g.get(EXPERT_GROUP)]
        lrs = [g["lr"] for g in experts]
        for g in experts:  # AdamW's update is linear in lr: this scales the experts' update
            g["lr"] *= self.orthogonal_lr_scale
        try:
            loss = self._orthogonal_step(closure, active, projections, measure)
        finally:
            for g, lr in zip(experts, lrs):
                g["lr"] = lr
        if self.moment == "project":  # in place: no weight-sized temporaries
            for key, projection in projections.items():
                moment = self.state[active[key]]["exp_avg"]
                projection.subtract(projection.products(moment), moment)
        return loss

    def _orthogonal_step(self, closure, active, projections, measure):
        if self.project == "gradient":
            for key, projection in projections.items():
                grad = active[key].grad
                projected = projection.apply(grad.to(projection.dtype))
                grad.copy_(self._rescaled(projected, grad.to(projection.dtype)))
            return super().step(closure)
        return self._step_projecting_update(closure, active, projections, measure)

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
            if self.max_gain > 1.0:
                cut = projection.removed(change, p.shape)
                delta = p.to(cut.dtype) - old[key].to(cut.dtype)
                if measure:
                    removed.append(float(cut.norm() / delta.norm().clamp(min=1e-30)))
                p.copy_((old[key].to(cut.dtype) + self._rescaled(delta - cut, delta)).to(p.dtype))
                continue
            if measure:  # old becomes minus the update: no further weight-sized tensor
                update_norm = old[key].sub_(p).norm().to(projection.dtype)
                removed.append(float(projection.removed_norm(change, p.shape)
                                     / update_norm.clamp(min=1e-30)))
            projection.subtract(change, p)
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
        if omoe is not None:
            report_changed_settings(self.settings, omoe.get("settings"))
        check_loaded_state(omoe, self.stats, self.stat_steps, self.mode)
        state_dict["param_groups"] = regroup_saved(state_dict["param_groups"], self.param_groups,
                                                   self._origin)
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # a checkpoint's groups bring their own kernel choice
            group["fused"] = self.defaults["fused"]
        for key in self.stats:
            self.stats[key] = omoe["stats"][key].to(self.stats[key])
            self.stat_steps[key] = omoe["stat_steps"][key].to(self.stat_steps[key])
        self.factors = {k: v.to(self.stats[k]) for k, v in omoe["factors"].items()}
        self.counters.update(omoe["counters"])
