"""OMoE's alternating schedule for any fairseq task: a mixin (`OMoESchedule`) and the option
it adds (`OMoEScheduleConfig`). It runs the accumulating/orthogonal phases of `--optimizer
omoe`, captures the routed inputs the statistics spaces need, and logs the projector and
expert-similarity metrics. Data flows one way: the model's MoE layers report to the capture,
the capture's summaries go to the optimizer.

    @dataclass
    class OMoEMaskedLMConfig(OMoEScheduleConfig, MaskedLMConfig):
        pass

    @register_task("omoe_masked_lm", dataclass=OMoEMaskedLMConfig)
    class OMoEMaskedLMTask(OMoESchedule, MaskedLMTask):
        pass
"""

import logging
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import torch
import torch.distributed as dist
from fairseq.dataclass import FairseqDataclass
from fairseq.distributed import utils as distributed_utils
from fairseq.logging import metrics

from ..analysis.similarity import (
    displacement_similarity,
    displacements,
    layer_similarity,
    pair_mean,
)
from ..moe import MoELayer, StackedExperts
from ..optim.capture import RoutedInputCapture
from ..optim.omoe import OMoE

logger = logging.getLogger(__name__)
SIMILARITY_METRICS = ("omoe_sim_cka", "omoe_sim_cos", "omoe_sim_delta")


class Phase(NamedTuple):
    position: int  # index of the update within its cycle
    accumulating: bool

    @property
    def name(self) -> str:
        return "accumulate" if self.accumulating else "orthogonal"


def phase_of(update_num: int, accumulate_steps: int, orthogonal_steps: int) -> Phase:
    """Cycles of `accumulate_steps` accumulating updates then `orthogonal_steps` orthogonal
    ones, keyed on fairseq's update count (so gradient accumulation and resumes agree)."""
    position = update_num % (accumulate_steps + orthogonal_steps)
    return Phase(position, position < accumulate_steps)


def find_omoe(optimizer) -> Optional[OMoE]:
    """The OMoE torch optimizer of a fairseq optimizer, or None for another optimizer.

    Every fairseq optimizer, the --fp16 and --amp wrappers included, hands out the torch
    optimizer it steps as its `optimizer` property; a torch optimizer is taken as it is."""
    inner = optimizer if isinstance(optimizer, torch.optim.Optimizer) else optimizer.optimizer
    return inner if isinstance(inner, OMoE) else None


@dataclass
class OMoEScheduleConfig(FairseqDataclass):
    omoe_similarity_tokens: int = field(
        default=512,
        metadata={
            "help": "tokens per validation batch and MoE layer on which every expert is run "
            "to log expert similarity (omoe_sim_cka, omoe_sim_cos); 0 = off"
        },
    )


class OMoESchedule:
    """Mix in before a fairseq task class (its config must include `OMoEScheduleConfig`):
    its updates then alternate as `--optimizer omoe` asks.

    In accumulating updates the MoE layers report their routed inputs; at every update the
    task hands the summaries (all-reduced over data-parallel workers) to the optimizer,
    forms the projectors at each switch to the orthogonal phase, and sets the phase of the
    step. Logged: `omoe_phase` (share of orthogonal updates), `omoe_trace` (mean
    trace(P_{-e}) / dim: 1 = nothing projected), `omoe_removed` (share of the expert update
    norm the projection removed, as last measured on the first orthogonal update of a cycle),
    `omoe_skipped` (statistics and projector updates skipped in the interval because of
    NaN/Inf or a failed factorisation), `omoe_empty` (experts' statistics updates in the
    interval with no routed token) and, on validation, `omoe_sim_cka` / `omoe_sim_cos` (the
    experts' outputs on the same tokens) and `omoe_sim_delta` (mean cosine of the experts'
    weight displacements since this process began training; it keeps one copy of the
    expert weights, only while similarity logging is on).
    With another optimizer the task trains as it would without the mixin and still logs
    similarity.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.capture: Optional[RoutedInputCapture] = None
        self._warned = False
        # expert weights when this process began training, {layer: (fc1, fc2)}, and the
        # mean cosine of the experts' displacements from them at the last validation
        self._start: Optional[dict[int, tuple[torch.Tensor, torch.Tensor]]] = None
        self._displacement_cos: Optional[float] = None

    def get_batch_iterator(self, dataset, **kwargs):
        """fairseq drops a split's last batch when its size is not a multiple of
        --required-batch-size-multiple (8 by default): harmless in training, but validation
        and fairseq-validate would leave up to 7 examples (for QA, a question's windows)
        unscored. Every split but the training one is batched with a multiple of 1."""
        if dataset is not self.datasets.get("train"):
            kwargs["required_batch_size_multiple"] = 1
        return super().get_batch_iterator(dataset, **kwargs)

    def _omoe(self, optimizer) -> Optional[OMoE]:
        omoe = find_omoe(optimizer)
        if omoe is None and not self._warned:
            logger.warning("the optimizer is not --optimizer omoe: no orthogonal phases")
            self._warned = True
        return omoe

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        if self._start is None and self.cfg.omoe_similarity_tokens > 0:
            self._start = {m.layer_index: (m.fc1_weight.detach().clone(),
                                           m.fc2_weight.detach().clone())
                           for m in model.modules() if isinstance(m, StackedExperts)}
        omoe = self._omoe(optimizer)
        if omoe is not None and _starts_update(model):
            # a fresh capture for every trainer step, also after one that was skipped (OOM,
            # fp16 overflow) without advancing update_num: its inputs are not this update's
            phase = phase_of(update_num, omoe.accumulate_steps, omoe.orthogonal_steps)
            self.capture = (RoutedInputCapture(omoe.stat, omoe.stat_rank, omoe.space)
                            if omoe.stats and phase.accumulating else None)
        _set_capture(model, None if ignore_grad else self.capture)
        try:
            return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)
        finally:
            _set_capture(model, None)

    def optimizer_step(self, optimizer, model, update_num):
        omoe = self._omoe(optimizer)
        if omoe is None:
            return super().optimizer_step(optimizer, model, update_num)
        phase = phase_of(update_num, omoe.accumulate_steps, omoe.orthogonal_steps)
        skipped_before, empty_before = omoe.skipped, omoe.counters["empty_stats"]
        if phase.position == 0:
            omoe.begin_cycle()
        if phase.accumulating:
            if omoe.stats:  # every worker reduces, also one that captured nothing (a dummy batch)
                capture = self.capture or RoutedInputCapture(omoe.stat, omoe.stat_rank, omoe.space)
                omoe.accumulate(capture.pop_summaries(_data_parallel_group(), statistics=omoe.stats))
        elif phase.position == omoe.accumulate_steps or not omoe.projectors_formed:
            omoe.form_projectors()
        self.capture = None
        omoe.set_phase(phase.name)
        super().optimizer_step(optimizer, model, update_num)
        metrics.log_scalar("omoe_phase", float(not phase.accumulating), round=2)
        metrics.log_scalar_sum("omoe_skipped", omoe.skipped - skipped_before)
        if phase.accumulating:
            metrics.log_scalar_sum("omoe_empty", omoe.counters["empty_stats"] - empty_before)
        if "trace" in omoe.last_measured:
            metrics.log_scalar("omoe_trace", omoe.last_measured["trace"], round=4)
        if "removed" in omoe.last_measured:  # measured on the first orthogonal update of a cycle
            metrics.log_scalar("omoe_removed", omoe.last_measured["removed"], round=4)

    @torch.no_grad()
    def begin_valid_epoch(self, epoch, model):
        super().begin_valid_epoch(epoch, model)
        if self._start:
            sims = [pair_mean(displacement_similarity(displacements(m, self._start[m.layer_index])))
                    for m in model.modules() if isinstance(m, StackedExperts)]
            self._displacement_cos = sum(sims) / len(sims)

    def valid_step(self, sample, model, criterion):
        sims = []
        hooks = []
        if self.cfg.omoe_similarity_tokens > 0:
            for layer in model.modules():
                if isinstance(layer, MoELayer):
                    hooks.append(layer.register_forward_hook(
                        lambda mod, args, _out: sims.append(layer_similarity(
                            mod.experts, args[0], args[1], self.cfg.omoe_similarity_tokens))
                    ))
        try:
            loss, sample_size, logging_output = super().valid_step(sample, model, criterion)
        finally:
            for hook in hooks:
                hook.remove()
        if sims:
            logging_output["omoe_sim_cka"] = sample_size * sum(s[0] for s in sims) / len(sims)
            logging_output["omoe_sim_cos"] = sample_size * sum(s[1] for s in sims) / len(sims)
        if self._displacement_cos is not None:
            logging_output["omoe_sim_delta"] = sample_size * self._displacement_cos
        return loss, sample_size, logging_output

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        for key in SIMILARITY_METRICS:
            if any(key in log for log in logging_outputs):
                total = sum(log.get(key, 0) for log in logging_outputs)
                metrics.log_scalar(key, total / max(sample_size, 1), sample_size, round=4)


def _starts_update(model) -> bool:
    """Whether this micro-batch is the first of a trainer step: fairseq's trainer sets every
    gradient to None at the start of each step (Trainer.zero_grad), and at no other time
    before the step's backward passes."""
    return all(p.grad is None for p in model.parameters())


def _set_capture(model, capture: Optional[RoutedInputCapture]) -> None:
    for module in model.modules():
        if isinstance(module, StackedExperts):
            module.capture = capture


def _data_parallel_group():
    return distributed_utils.get_data_parallel_group() if dist.is_initialized() else None
