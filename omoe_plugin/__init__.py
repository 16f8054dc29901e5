"""OMoE for fairseq: MoE encoders fine-tuned with an orthogonal expert optimizer.

Importing the package registers every component with fairseq (model, criterion, optimizer,
task), makes fairseq read checkpoints safely (`convert.checkpoint.install_safe_loading`) and
lets its --fp16/--bf16 wrapper keep the expert tags (`optim.fp16.install_expert_tag_copy`);
`--user-dir user_dir` does exactly that import.
"""

from . import criterions, models, optim, tasks  # noqa: F401 (registers with fairseq)
from .convert.checkpoint import install_safe_loading
from .optim.fp16 import install_expert_tag_copy

install_safe_loading()
install_expert_tag_copy()

__version__ = "0.1.0"
