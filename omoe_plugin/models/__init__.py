"""fairseq models: the MoE encoder for sentence classification (`omoe_roberta`)."""

from .omoe_roberta import OMoERobertaConfig, OMoERobertaModel  # noqa: F401 (registers)
