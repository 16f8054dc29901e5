"""OMoE for fairseq: MoE encoders fine-tuned with an orthogonal expert optimizer.

Importing the package registers every component with fairseq (model, criterion, optimizer,
task); `--user-dir user_dir` does exactly that import.
"""

from . import criterions, models, optim, tasks  # noqa: F401 (registers with fairseq)

__version__ = "0.1.0"
