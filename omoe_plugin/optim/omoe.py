"""The OMoE optimizer: AdamW whose expert updates are made orthogonal to the other experts in
alternating phases (Liu et al. 2023, arXiv 2310.09762; OWM, Zeng et al. 2019). Its fairseq
options are in `fairseq_omoe`, the projector maths in `projector` and `projection`."""

from typing import Any, Callable, Optional

import torch

from .groups import (EXPERT_GROUP, expert_parallel_group, expert_weights, fused_kernel,
                     param_groups, regroup_saved, split_expert_groups)
from .projection import DirectionProjection, Projection, as_rows, stat_dtype
from .projector import expert_factors, fold_columns, mean_trace
from .resume import check_loaded_state, report_changed_settings
from .settings import OMoESettings, option
from .sharded import ExpertShards, ShardedDirectionProjection

# this update's routed-input summaries, given the optimizer's statistics (key -> [E, dim, r],
# for their keys, sizes and device): key -> [E, dim, w] (see capture.RoutedInputCapture)
RoutedInputs = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


class OMoE(torch.optim.AdamW):
    """AdamW with orthogonal expert updates (the algorithm: docs/algorithm.md).

    Expert weights are stacked tensors [E, out, in] (expert e is a slice): tagged by this
    package's MoE layer, listed per layer in `experts`, or the tensors of a param group
    marked {"omoe_experts": True}. The optimizer keeps its own schedule: its step count gives
    the phase (`settings.phase`), cycles of `accumulate_steps` plain AdamW updates, then
    `orthogonal_steps` updates in which every expert weight's update is projected away from
    the other experts' directions; everything else always takes the AdamW update.

    The default reading (`space="deltas"`) takes the directions from AdamW's own first
    moments, so `loss.backward(); optimizer.step()` is all it needs. The statistics readings
    (inputs, centred, outputs) need each accumulating update's routed-input summaries: set
    `routed_inputs` before each such step (the fairseq tasks do, see tasks/schedule.py).
    After every step, `report` holds what it did (phase, skipped and empty statistics, last
    projector measurements), for logging. With only accumulating phases the parameters follow
    torch.optim.AdamW (its fused kernel) exactly.

    Under expert parallelism each worker holds a consecutive share [E/N, out, in] of every
    stacked expert weight: pass the expert-parallel process group as `expert_group` (the MoE
    layer built with one tags its weights, and fairseq needs nothing more). The projections
    then equal the single-process ones, with what travels described in `sharded`, and
    `report["sent_bytes"]` counts what this worker sent in the step.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, *, experts=None,
                 expert_group=None, **settings: Any) -> None:
        """settings: the fields of OMoESettings (alpha, accumulate_steps, space, ...)."""
        self.settings = s = OMoESettings(**settings)
        groups = param_groups(params)
        self.experts = expert_weights(groups, experts)  # key -> [E, out, in]
        if not self.experts:
            raise ValueError(
                "--optimizer omoe found no expert weights to train: the model has no MoE layer "
                "(use an omoe_roberta model with --moe-freq >= 1, or --optimizer adam for a "
                "dense model; outside fairseq, pass experts= or mark a param group "
                "omoe_experts). With --fp16 add --fp16-no-flatten-grads: flattened fp16 "
                "gradients are one tensor with no expert weights in it. A copy.deepcopy of the "
                "model also loses the expert tags (moe_expert_axis, moe_input, moe_layer)."
            )
        group = expert_group or expert_parallel_group(self.experts.values())
        self.shards = ExpertShards(group) if group is not None else None
        groups, self._origin = split_expert_groups(groups, self.experts)
        super().__init__(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         fused=fused_kernel(groups))
        # projector maths in fp32 at least, whatever the parameters' precision; statistics
        # live in the space the projector acts on (deltas: none, its directions are read off
        # AdamW's state)
        self.stats = {} if s.space == "deltas" else {
            k: torch.zeros(p.size(0), as_rows(p, s.space).size(2), s.max_rank,
                           dtype=stat_dtype(p), device=p.device)
            for k, p in self.experts.items()
        }
        self.stat_steps = {k: torch.zeros_like(v[:, 0, 0]) for k, v in self.stats.items()}
        self.factors: dict[str, torch.Tensor] = {}
        self.counters = {"steps": 0, "cycles": 0, "projector_updates": 0, "skipped_stats": 0,
                         "skipped_projectors": 0, "empty_stats": 0}
        self.last_measured = {}  # "trace", "removed": last projector measurements, for logging
        self._measure_next = False  # measure the removed share on the next orthogonal step
        self.routed_inputs: Optional[RoutedInputs] = None  # consumed by the next step
        self.report: dict[str, float] = {}

    @property
    def next_phase(self):
        """The phase of the next step."""
        return self.settings.phase(self.counters["steps"])

    @property
    def projectors_formed(self) -> bool:
        """Whether form_projectors has run (in this run or the checkpointed one)."""
        return self.counters["projector_updates"] > 0 and (self.settings.space == "deltas"
                                                           or bool(self.factors))

    @torch.no_grad()
    def begin_cycle(self) -> None:
        """Scale the statistics by the forgetting factor (0 = start afresh)."""
        for key in self.stats:
            self.stats[key].mul_(self.settings.forget**0.5)
            self.stat_steps[key].mul_(self.settings.forget)
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
                folded = fold_columns(stats[e], X[e], self.settings.max_rank)
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
            if self.shards is not None:  # every expert's factor, on every worker
                mean_stats = self.shards.all_gather(mean_stats)
            factors, ok = expert_factors(mean_stats, self.settings.alpha, self.settings.mode)
            if not ok.all():
                previous = self.factors.get(key, torch.zeros_like(factors))
                factors[~ok] = previous[~ok]
                self.counters["skipped_projectors"] += int((~ok).sum())
            self.factors[key] = factors
            traces.append(mean_trace(factors, self.settings.mode))
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
        s = self.settings
        if s.space == "deltas":
            projections = {}
            for key, p in active.items():
                moment = self.state[p].get("exp_avg")
                if moment is None or (p.size(0) == 1 and self.shards is None):  # no AdamW
                    continue  # step yet, or no other expert
                moment = moment.to(stat_dtype(p)).reshape(p.size(0), -1)
                projection = (DirectionProjection(moment, s.alpha, s.mode) if self.shards is None
                              else ShardedDirectionProjection(moment, s.alpha, s.mode,
                                                              self.shards))
                if projection.finite:
                    projections[key] = projection
                else:
                    self.counters["skipped_projectors"] += p.size(0)
            return projections
        return {k: Projection(self.factors[k].to(p.device), s.mode, s.space, self._local(p))
                for k, p in active.items() if self.factors[k].size(-1) > 0}

    def _local(self, p: torch.Tensor) -> slice:
        """The experts of stacked weight p among all of them (a share under expert
        parallelism)."""
        if self.shards is None:
            return slice(0, p.size(0))
        return slice(self.shards.rank * p.size(0), (self.shards.rank + 1) * p.size(0))

    def _norm(self, t: torch.Tensor) -> torch.Tensor:
        """The Frobenius norm of t, stacked expert tensor (all workers' shares together)."""
        return t.norm() if self.shards is None else self.shards.norm(t).to(t.dtype)

    # -- the update -----------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        """One update in the phase the step count gives: a cycle's first step restarts the
        statistics, accumulating steps fold in `routed_inputs` (statistics readings), the
        first orthogonal step forms the projectors."""
        phase, s = self.next_phase, self.settings
        skipped, empty = self.skipped, self.counters["empty_stats"]
        sent = self.shards.sent_bytes if self.shards is not None else 0
        if phase.position == 0:
            self.begin_cycle()
        if phase.accumulating and self.stats:
            if self.routed_inputs is None:
                raise RuntimeError(
                    f"{option('space')} {s.space} needs the routed inputs of every "
                    "accumulating update: train with an omoe_* task (--task "
                    "omoe_sentence_prediction), set optimizer.routed_inputs before each step "
                    "when driving the optimizer yourself, or use the default space, deltas")
            self.accumulate(self.routed_inputs(self.stats))
        elif not phase.accumulating and (phase.position == s.accumulate_steps
                                         or not self.projectors_formed):
            self.form_projectors()
        self.routed_inputs = None
        loss = super().step(closure) if phase.accumulating else self._orthogonal(closure)
        self.counters["steps"] += 1
        self.report = {"phase": float(not phase.accumulating),
                       "skipped": float(self.skipped - skipped), **self.last_measured}
        if phase.accumulating:
            self.report["empty"] = float(self.counters["empty_stats"] - empty)
        if self.shards is not None:
            self.report["sent_bytes"] = float(self.shards.sent_bytes - sent)
        return loss

    def _orthogonal(self, closure):
        s = self.settings
        active = {k: p for k, p in self.experts.items() if p.grad is not None}
        if not active:
            return super().step(closure)
        projections = self._step_projections(active)
        for projection in projections.values():
            projection.strength = s.strength(self.counters["steps"])
        measure = self._measure_next  # first orthogonal step of a cycle: log what is removed
        self._measure_next = False
        experts = [g for g in self.param_groups if g.get(EXPERT_GROUP)]
        lrs = [g["lr"] for g in experts]
        for g in experts:  # AdamW's update is linear in lr: this scales the experts' update
            g["lr"] *= s.orthogonal_lr_scale
        try:
            loss = self._orthogonal_step(closure, active, projections, measure)
        finally:
            for g, lr in zip(experts, lrs):
                g["lr"] = lr
        if s.moment == "project":  # in place: no weight-sized temporaries
            for key, projection in projections.items():
                moment = self.state[active[key]]["exp_avg"]
                projection.subtract(projection.products(moment), moment)
        return loss

    def _orthogonal_step(self, closure, active, projections, measure):
        if self.settings.project == "gradient":
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
        max_gain = self.settings.max_gain
        keep_old = measure or max_gain > 1.0
        old = {k: active[k].detach().clone() for k in projections} if keep_old else {}
        before = {k: proj.products(active[k]) for k, proj in projections.items()}
        loss = super().step(closure)
        removed = []
        for key, projection in projections.items():
            p = active[key]
            change = tuple(a - b for a, b in zip(projection.products(p), before[key]))
            if max_gain > 1.0:
                cut = projection.removed(change, p.shape)
                delta = p.to(cut.dtype) - old[key].to(cut.dtype)
                if measure:
                    removed.append(float(self._norm(cut) / self._norm(delta).clamp(min=1e-30)))
                p.copy_((old[key].to(cut.dtype) + self._rescaled(delta - cut, delta)).to(p.dtype))
                continue
            if measure:  # old becomes minus the update: no further weight-sized tensor
                update_norm = self._norm(old[key].sub_(p)).to(projection.dtype)
                removed.append(float(projection.removed_norm(change, p.shape, self._norm)
                                     / update_norm.clamp(min=1e-30)))
            projection.subtract(change, p)
        if removed:
            self.last_measured["removed"] = sum(removed) / len(removed)
        return loss

    def _rescaled(self, projected: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        """projected [E, ...] scaled per expert towards original's norm, by at most max_gain."""
        max_gain = self.settings.max_gain
        if max_gain == 1.0:
            return projected
        dims = tuple(range(1, projected.dim()))
        gain = original.norm(dim=dims) / projected.norm(dim=dims).clamp(min=1e-30)
        return projected * gain.clamp(1.0, max_gain).view(-1, *[1] * len(dims))

    # -- checkpointing: statistics, projectors and counters are optimizer state ---------------

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["omoe"] = {
            "stats": dict(self.stats),
            "stat_steps": dict(self.stat_steps),
            "factors": dict(self.factors),
            "counters": dict(self.counters),
            "settings": self.settings.as_dict(),
            # the position, in the parameters as given, of each saved parameter (they are
            # saved as split into groups): what omoe-consolidate needs to join expert shards
            "origin": list(self._origin),
        }
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        omoe = state_dict.pop("omoe", None)
        if omoe is not None:
            report_changed_settings(self.settings.as_dict(), omoe.get("settings"))
        check_loaded_state(omoe, self.stats, self.stat_steps, self.settings.mode,
                           self.shards.size if self.shards is not None else 1)
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
        if "steps" not in omoe["counters"]:  # saved before OMoE counted its steps: AdamW's count
            self.counters["steps"] = max((int(st["step"]) for st in self.state.values()
                                          if "step" in st), default=0)
