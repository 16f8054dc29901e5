"""fairseq tasks: sentence prediction with OMoE's alternating schedule."""

from .omoe_sentence_prediction import OMoESentencePredictionTask  # noqa: F401 (registers)
