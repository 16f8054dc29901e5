"""fairseq tasks with OMoE's alternating schedule: sentence prediction, token tagging and
extractive question answering."""

from .omoe_sentence_prediction import OMoESentencePredictionTask  # noqa: F401 (registers)
from .omoe_token_classification import OMoETokenClassificationTask  # noqa: F401
from .omoe_span_qa import OMoESpanQATask  # noqa: F401
