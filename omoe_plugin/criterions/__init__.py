"""fairseq criterions: sentence prediction and token tagging, plus the MoE router losses."""

from .omoe_sentence_prediction import OMoESentencePredictionCriterion  # noqa: F401 (registers)
from .omoe_token_classification import OMoETokenClassificationCriterion  # noqa: F401
