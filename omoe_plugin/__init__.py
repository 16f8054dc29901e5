"""OMoE for fairseq: MoE encoders fine-tuned with an orthogonal expert optimizer.

`register()` registers every component with fairseq (model, criterion, optimizer, task) and
makes fairseq read checkpoints safely (`convert.fairseq_io.install_safe_loading`) and keep
the expert tags through its --fp16 wrapper (`optim.fp16.install_expert_tag_copy`);
`--user-dir user_dir` calls it. Importing the package alone loads neither fairseq nor torch,
so ONNX Runtime serving (`omoe_plugin.export.inference`, `omoe-infer`) starts in a second.
"""

__version__ = "0.1.0"


def register() -> None:
    """Register the plugin's fairseq components and route fairseq's checkpoint loading
    through the safe loader (idempotent)."""
    from . import criterions, models, tasks  # noqa: F401 (registers with fairseq)
    from .optim import fairseq_omoe  # noqa: F401
    from .convert.fairseq_io import install_safe_loading
    from .optim.fp16 import install_expert_tag_copy

    install_safe_loading()
    install_expert_tag_copy()
