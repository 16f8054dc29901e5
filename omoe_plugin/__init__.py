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
    quiet_dependency_warnings()


def quiet_dependency_warnings() -> None:
    """Hide the warnings fairseq's own use of its dependencies prints at every start (about
    20 lines): hydra's deprecations of the API fairseq configures with, torch's of the
    `torch.cuda.amp.autocast` fairseq calls, and the DataLoader's pin_memory notice on a
    CPU. None is about the user's run; every other warning still shows."""
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning, module=r"hydra\.")
    warnings.filterwarnings("ignore", category=UserWarning,
                            message=r"\s*'config' is validated against ConfigStore schema")
    warnings.filterwarnings("ignore", category=FutureWarning,
                            message=r"`torch\.cuda\.amp\.autocast\(args\.\.\.\)` is deprecated")
    warnings.filterwarnings("ignore", category=UserWarning,
                            message=r"'pin_memory' argument is set as true but no accelerator")
