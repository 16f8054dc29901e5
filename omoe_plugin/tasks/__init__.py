"""fairseq tasks with OMoE's alternating schedule: sentence prediction and token tagging."""

from .omoe_sentence_prediction import OMoESentencePredictionTask  # noqa: F401 (registers)
from .omoe_token_classification import OMoETokenClassificationTask  # noqa: F401
