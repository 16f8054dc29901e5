"""fairseq criterions: sentence prediction, token tagging and span QA, plus the MoE router
losses."""

from .omoe_sentence_prediction import OMoESentencePredictionCriterion  # noqa: F401 (registers)
from .omoe_token_classification import OMoETokenClassificationCriterion  # noqa: F401
from .omoe_span_qa import OMoESpanQACriterion  # noqa: F401
