"""The `omoe` optimizer: settings, projector maths (pure functions), the torch optimizer and
its fairseq registration."""

from .fairseq_omoe import FairseqOMoE  # noqa: F401 (registers)
from .omoe import OMoE  # noqa: F401
