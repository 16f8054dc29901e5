"""The `omoe` optimizer: projector maths (pure functions) and the fairseq optimizer."""

from .omoe import OMoE, FairseqOMoE  # noqa: F401 (registers)
