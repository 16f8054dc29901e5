"""`omoe_span_qa`: cross-entropy of the answer's start and end positions plus the MoE router
losses (`router_losses`); on validation, exact match and F1 per question over all its windows.

Exact match and F1 are SQuAD's, counted on the context's sub-words: a question's predicted
span is the best-scoring (start logit + end logit) span of at most --max-answer-tokens
sub-words inside the context part of any of its windows; it matches an answer when it covers
the same sub-words, and its F1 is the best over the answers of the overlap F1 of the two
sets of sub-word positions."""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.logging import meters, metrics
from fairseq.logging.meters import Meter

from ..models.omoe_roberta import SPAN_HEAD
from ..spans import best_span
from .router_losses import RouterLossConfig, RouterLosses


def window_spans(start: torch.Tensor, end: torch.Tensor, span: torch.Tensor,
                 max_answer: int) -> list[tuple]:
    """start / end [B, T] logits, span [B, S] (the task's span records) -> per window
    (question index, score, first and last predicted context sub-word, gold spans)."""
    rows = []
    for s, e, record in zip(start.cpu().numpy(), end.cpu().numpy(), span.tolist()):
        question, first, offset, length, *golds = (g for g in record if g >= 0)
        score, begin, last = best_span(s, e, first, length, max_answer)
        rows.append((question, score, begin - first + offset, last - first + offset,
                     tuple(zip(golds[::2], golds[1::2]))))
    return rows


def overlap_f1(predicted: tuple[int, int], gold: tuple[int, int]) -> float:
    common = min(predicted[1], gold[1]) - max(predicted[0], gold[0]) + 1
    if common <= 0:
        return 0.0
    precision = common / (predicted[1] - predicted[0] + 1)
    recall = common / (gold[1] - gold[0] + 1)
    return 2 * precision * recall / (precision + recall)


class BestSpans(Meter):
    """Every question's best-scoring span over the windows seen (`window_spans` rows), and
    their exact match and F1 (in %)."""

    def __init__(self) -> None:
        self.best = {}  # question index -> (score, predicted span, gold spans)

    def update(self, rows: list[tuple]) -> None:
        for question, score, begin, last, golds in rows:
            if question not in self.best or score > self.best[question][0]:
                self.best[question] = (score, (begin, last), golds)

    def reset(self) -> None:
        self.best = {}

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best = state_dict["best"]

    def _mean(self, score) -> float:
        values = [max(score(predicted, g) for g in golds)
                  for _, predicted, golds in self.best.values()]
        return round(100.0 * sum(values) / len(values), 2) if values else 0.0

    @property
    def exact_match(self) -> float:
        return self._mean(lambda predicted, gold: float(predicted == gold))

    @property
    def f1(self) -> float:
        return self._mean(overlap_f1)

    @property
    def smoothed_value(self) -> float:
        return self.f1


# fairseq saves the meters of its named aggregators in checkpoints (the trainer's "valid" one
# among them) and restores each by its class name from fairseq.logging.meters: make ours known
# there, or a resumed run could not load its own checkpoint.
meters.BestSpans = BestSpans


@dataclass
class OMoESpanQACriterionConfig(RouterLossConfig):
    pass


class SpanQACriterion(FairseqCriterion):
    """Mean of the start and end cross-entropies over the non-padding positions, summed over
    windows (sample_size = windows); logs `exact_match` and `f1` on validation."""

    def __init__(self, cfg, task) -> None:
        super().__init__(task)
        self.max_answer = task.cfg.max_answer_tokens

    def forward(self, model, sample, reduce=True):
        # [B, T, 2]: start and end logits
        logits, _ = model(**sample["net_input"], classification_head_name=SPAN_HEAD)
        padding = sample["net_input"]["src_tokens"].eq(self.padding_idx)
        start, end = logits.float().masked_fill(padding[..., None], -math.inf).unbind(dim=-1)
        target = sample["target"]
        loss = (F.cross_entropy(start, target[:, 0], reduction="sum")
                + F.cross_entropy(end, target[:, 1], reduction="sum")) / 2
        sample_size = target.size(0)
        logging_output = {"loss": loss.data, "ntokens": sample["ntokens"],
                          "nsentences": sample_size, "sample_size": sample_size}
        if not model.training:
            logging_output["spans"] = window_spans(start.detach(), end.detach(), sample["span"],
                                                 self.max_answer)
        return loss, sample_size, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        loss = sum(log.get("loss", 0) for log in logging_outputs)
        metrics.log_scalar("loss", loss / max(sample_size, 1) / math.log(2), sample_size, round=3)
        spans = [row for log in logging_outputs for row in log.get("spans", ())]
        if spans:
            metrics.log_custom(BestSpans, "_best_spans", spans)
            metrics.log_derived("exact_match", lambda meters: meters["_best_spans"].exact_match)
            metrics.log_derived("f1", lambda meters: meters["_best_spans"].f1)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return False  # validation's span records are lists, gathered rather than summed


@register_criterion("omoe_span_qa", dataclass=OMoESpanQACriterionConfig)
class OMoESpanQACriterion(RouterLosses, SpanQACriterion):
    """Start/end cross-entropy plus the router losses."""
