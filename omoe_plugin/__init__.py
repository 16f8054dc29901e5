"""OMoE for fairseq: MoE encoders fine-tuned with an orthogonal expert optimizer.

Importing the package registers every component with fairseq (models, criterions, and
later optimizers and tasks); `--user-dir user_dir` does exactly that import.
"""

from . import criterions, models  # noqa: F401 (registers with fairseq)

__version__ = "0.1.0"
