"""OMoE for fairseq: MoE encoders fine-tuned with an orthogonal expert optimizer.

Importing the package registers every component with fairseq (model, criterion, optimizer,
task) and makes fairseq read checkpoints safely (`convert.checkpoint.install_safe_loading`);
`--user-dir user_dir` does exactly that import.
"""

from . import criterions, models, optim, tasks  # noqa: F401 (registers with fairseq)
from .convert.checkpoint import install_safe_loading

install_safe_loading()

__version__ = "0.1.0"
