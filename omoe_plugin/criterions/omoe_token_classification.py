"""`omoe_token_classification`: per-token cross-entropy over the tagged positions plus the MoE
router losses (`router_losses`); on validation, entity-level precision, recall and F1."""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.logging import metrics
from seqeval.metrics.sequence_labeling import get_entities

from ..models.omoe_roberta import TOKEN_HEAD
from ..tasks.omoe_token_classification import IGNORE
from .router_losses import RouterLossConfig, RouterLosses

ENTITY_COUNTS = ("_entity_correct", "_entity_predicted", "_entity_gold")


def entity_counts(predicted: torch.Tensor, target: torch.Tensor, tags: list[str]) -> dict:
    """Entities (seqeval's spans: type, first and last word) predicted, in the gold tags, and
    both, summed over the rows of predicted / target [B, T] (tag indices, IGNORE where a
    position has no tag). Sums over batches give corpus-level micro precision / recall / F1,
    exactly seqeval's f1_score on all sentences at once."""
    correct = n_predicted = n_gold = 0
    for pred_row, gold_row in zip(predicted.tolist(), target.tolist()):
        words = [(p, g) for p, g in zip(pred_row, gold_row) if g != IGNORE]
        pred = set(get_entities([tags[p] for p, _ in words]))
        gold = set(get_entities([tags[g] for _, g in words]))
        correct, n_predicted, n_gold = correct + len(pred & gold), n_predicted + len(pred), \
            n_gold + len(gold)
    return dict(zip(ENTITY_COUNTS, (correct, n_predicted, n_gold)))


@dataclass
class OMoETokenClassificationCriterionConfig(RouterLossConfig):
    pass


class TokenClassificationCriterion(FairseqCriterion):
    """Cross-entropy summed over tagged positions (sample_size = their number); logs
    `accuracy` (of tags, in %) and, on validation, `entity_precision`, `entity_recall` and
    `entity_f1` (in %, corpus-level micro averages over entities)."""

    def __init__(self, cfg, task) -> None:
        super().__init__(task)
        self.tags = task.tag_list

    def forward(self, model, sample, reduce=True):
        # [B, T, tags]
        logits, _ = model(**sample["net_input"], classification_head_name=TOKEN_HEAD)
        target = sample["target"]
        tagged = target != IGNORE
        loss = F.cross_entropy(logits[tagged].float(), target[tagged], reduction="sum")
        predicted = logits.detach().argmax(dim=-1)
        sample_size = int(tagged.sum())
        logging_output = {
            "loss": loss.data, "ntokens": sample["ntokens"], "nsentences": target.size(0),
            "sample_size": sample_size, "ncorrect": (predicted[tagged] == target[tagged]).sum(),
        }
        if not model.training:
            logging_output.update(entity_counts(predicted, target, self.tags))
        return loss, sample_size, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        total = lambda key: sum(log.get(key, 0) for log in logging_outputs)
        sample_size = total("sample_size")
        metrics.log_scalar("loss", total("loss") / max(sample_size, 1) / math.log(2),
                           sample_size, round=3)
        metrics.log_scalar("accuracy", 100.0 * total("ncorrect") / max(sample_size, 1),
                           sample_size, round=2)
        if not any(ENTITY_COUNTS[0] in log for log in logging_outputs):
            return
        for key in ENTITY_COUNTS:
            metrics.log_scalar_sum(key, total(key))
        counts = lambda meters: [meters[key].sum for key in ENTITY_COUNTS]
        metrics.log_derived("entity_precision", lambda m: _percent(counts(m)[0], counts(m)[1]))
        metrics.log_derived("entity_recall", lambda m: _percent(counts(m)[0], counts(m)[2]))
        metrics.log_derived("entity_f1", lambda m: _percent(2 * counts(m)[0],
                                                            counts(m)[1] + counts(m)[2]))

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


def _percent(part: float, whole: float) -> float:
    return round(100.0 * float(part) / float(whole), 2) if whole else 0.0


@register_criterion("omoe_token_classification",
                    dataclass=OMoETokenClassificationCriterionConfig)
class OMoETokenClassificationCriterion(RouterLosses, TokenClassificationCriterion):
    """Token cross-entropy plus the router losses."""
