"""`omoe_sentence_prediction`: fairseq's sentence_prediction loss plus the MoE router losses
(`router_losses`)."""

from dataclasses import dataclass

from fairseq.criterions import register_criterion
from fairseq.criterions.sentence_prediction import (
    SentencePredictionConfig,
    SentencePredictionCriterion,
)

from .router_losses import RouterLossConfig, RouterLosses


@dataclass
class OMoESentencePredictionCriterionConfig(RouterLossConfig, SentencePredictionConfig):
    pass


@register_criterion("omoe_sentence_prediction", dataclass=OMoESentencePredictionCriterionConfig)
class OMoESentencePredictionCriterion(RouterLosses, SentencePredictionCriterion):
    """Cross-entropy (or MSE with --regression-target) plus the router losses."""
