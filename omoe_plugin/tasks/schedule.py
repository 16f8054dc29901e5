"""What `--optimizer omoe` needs from any fairseq task: a mixin (`OMoESchedule`) and the option
it adds (`OMoEScheduleConfig`). It captures the routed inputs the statistics spaces need,
hands them to the optimizer (which keeps its own accumulating/orthogonal schedule), and logs
the projector and expert-similarity metrics. Data flows one way: the model's MoE layers report to the capture,
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
from functools import partial
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from fairseq.data import BaseWrapperDataset, FairseqDataset, SortDataset
from fairseq.dataclass import FairseqDataclass
from fairseq.distributed import utils as distributed_utils
from fairseq.logging import metrics

from ..analysis.similarity import (
    displacement_similarity,
    displacements,
    layer_similarity,
    pair_mean,
)
from ..models.expert_parallel import expert_parallel_of, reduce_expert_gradients
from ..moe import MoELayer, StackedExperts
from ..optim.capture import RoutedInputCapture
from ..optim.omoe import OMoE

logger = logging.getLogger(__name__)
SIMILARITY_METRICS = ("omoe_sim_cka", "omoe_sim_cos", "omoe_sim_delta")


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
    omoe_group_by_length: bool = field(
        default=False,
        metadata={
            "help": "batch examples of similar length together, new batches every epoch, "
            "in shuffled order: less padding, so faster steps where lengths vary (off: "
            "fairseq's random batches)"
        },
    )


class OMoESchedule:
    """Mix in before a fairseq task class (its config must include `OMoEScheduleConfig`):
    its updates then alternate as `--optimizer omoe` asks.

    The optimizer keeps its own schedule. For its statistics readings, the MoE layers report
    their routed inputs in accumulating updates and the task hands the update's summaries
    (all-reduced over data-parallel workers) to the optimizer's step. Logged, from the
    optimizer's report of each step: `omoe_phase` (share of orthogonal updates), `omoe_trace` (mean
    trace(P_{-e}) / dim: 1 = nothing projected), `omoe_removed` (share of the expert update
    norm the projection removed, as last measured on the first orthogonal update of a cycle),
    `omoe_skipped` (statistics and projector updates skipped in the interval because of
    NaN/Inf or a failed factorisation), `omoe_empty` (experts' statistics updates in the
    interval with no routed token) and, on validation, `omoe_sim_cka` / `omoe_sim_cos` (the
    experts' outputs on the same tokens) and `omoe_sim_delta` (mean cosine of the experts'
    weight displacements since this process began training; it keeps one copy of the
    expert weights, only while similarity logging is on).
    With another optimizer the task trains as it would without the mixin and still logs
    similarity. With --omoe-group-by-length every split it loads is batched by length
    (`ByLength`), whatever the optimizer.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.capture: Optional[RoutedInputCapture] = None
        self._warned = False
        # expert weights when this process began training, {layer: (fc1, fc2)}, and the
        # mean cosine of the experts' displacements from them at the last validation
        self._start: Optional[dict[int, tuple[torch.Tensor, torch.Tensor]]] = None
        self._displacement_cos: Optional[float] = None

    def load_dataset(self, split, *args, **kwargs):
        dataset = super().load_dataset(split, *args, **kwargs)
        if self.cfg.omoe_group_by_length:
            self.datasets[split] = dataset = ByLength(self.datasets[split])
        return dataset

    def get_batch_iterator(self, dataset, **kwargs):
        """fairseq drops a split's last batch when its size is not a multiple of
        --required-batch-size-multiple (8 by default): harmless in training, but validation
        and fairseq-validate would leave up to 7 examples (for QA, a question's windows)
        unscored. Every split but the training one is batched with a multiple of 1."""
        if dataset is not self.datasets.get("train"):
            kwargs["required_batch_size_multiple"] = 1
        return super().get_batch_iterator(dataset, **kwargs)

    def _similarity(self, model) -> bool:
        """Whether to log the experts' similarity: asked for, and every expert here (under
        expert parallelism, run omoe-analyze on the consolidated checkpoint instead)."""
        return self.cfg.omoe_similarity_tokens > 0 and expert_parallel_of(model) is None

    def _omoe(self, optimizer) -> Optional[OMoE]:
        omoe = find_omoe(optimizer)
        if omoe is None and not self._warned:
            logger.warning("the optimizer is not --optimizer omoe: no orthogonal phases")
            self._warned = True
        return omoe

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        if self._start is None and self._similarity(model):
            self._start = {m.layer_index: (m.fc1_weight.detach().clone(),
                                           m.fc2_weight.detach().clone())
                           for m in model.modules() if isinstance(m, StackedExperts)}
        omoe = self._omoe(optimizer)
        if omoe is not None and _starts_update(model):
            # a fresh capture for every trainer step, also after one that was skipped (OOM,
            # fp16 overflow) without a step: its inputs are not this update's
            s = omoe.settings
            self.capture = (RoutedInputCapture(s.stat, s.stat_rank, s.space)
                            if omoe.stats and omoe.next_phase.accumulating else None)
        _set_capture(model, None if ignore_grad else self.capture)
        try:
            return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)
        finally:
            _set_capture(model, None)

    def optimizer_step(self, optimizer, model, update_num):
        reduce_expert_gradients(model)
        omoe = self._omoe(optimizer)
        if omoe is None:
            return super().optimizer_step(optimizer, model, update_num)
        if omoe.stats:  # every worker reduces, also one that captured nothing (a dummy batch)
            s = omoe.settings
            capture = self.capture or RoutedInputCapture(s.stat, s.stat_rank, s.space)
            omoe.routed_inputs = partial(capture.pop_summaries, _summary_group(model))
        self.capture = None
        super().optimizer_step(optimizer, model, update_num)
        for name, value in omoe.report.items():
            if name in ("skipped", "empty"):  # counts in the interval
                metrics.log_scalar_sum("omoe_" + name, value)
            else:
                metrics.log_scalar("omoe_" + name, value, round=2 if name == "phase" else 4)

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
        if self._similarity(model):
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


class ByLength(BaseWrapperDataset):
    """A split's examples (unwrapped from fairseq's shuffling SortDataset) in order of length,
    ties in a random order drawn anew each epoch: fairseq cuts its batches from this order,
    so each batch holds examples of about one length, and it shuffles the batches. The
    batches are rebuilt every epoch (fairseq seeds `ordered_indices` with seed + epoch, as
    for its own length-sorted datasets), so an example meets other companions each epoch."""

    def __init__(self, dataset: FairseqDataset) -> None:
        super().__init__(dataset.dataset if isinstance(dataset, SortDataset) else dataset)
        self.lengths = np.fromiter((self.dataset.num_tokens(i) for i in range(len(self))),
                                   dtype=np.int64, count=len(self))

    @property
    def can_reuse_epoch_itr_across_epochs(self) -> bool:
        return False

    def ordered_indices(self) -> np.ndarray:
        ties = np.random.permutation(len(self))
        return ties[np.argsort(self.lengths[ties], kind="stable")]


def _starts_update(model) -> bool:
    """Whether this micro-batch is the first of a trainer step: fairseq's trainer sets every
    gradient to None at the start of each step (Trainer.zero_grad), and at no other time
    before the step's backward passes."""
    return all(p.grad is None for p in model.parameters())


def _set_capture(model, capture: Optional[RoutedInputCapture]) -> None:
    for module in model.modules():
        if isinstance(module, StackedExperts):
            module.capture = capture


def _summary_group(model):
    """The workers whose routed-input summaries add up: the data-parallel ones, or under
    expert parallelism the replicas of this worker's experts."""
    parallel = expert_parallel_of(model)
    if parallel is not None:
        return parallel.replicas
    return distributed_utils.get_data_parallel_group() if dist.is_initialized() else None
