"""The `omoe` optimizer: settings, projector maths (pure functions), the torch optimizer
(`OMoE`, usable in any PyTorch training loop: this package imports no fairseq) and, in
`fairseq_omoe`, its fairseq registration."""

from .omoe import OMoE  # noqa: F401
from .settings import OMoESettings  # noqa: F401
