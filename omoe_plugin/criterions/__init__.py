"""fairseq criterions: sentence prediction plus the MoE router losses."""

from .omoe_sentence_prediction import OMoESentencePredictionCriterion  # noqa: F401 (registers)
