"""What makes a checkpoint not fit a model, in one line: the first tensor that differs, its two
shapes, and the option that fixes it (fairseq itself says only "please ensure that the
architectures match", 90 lines below the cause)."""

from typing import Optional

import torch


class CheckpointMismatch(ValueError):
    """A checkpoint whose tensors do not fit the model built from the options."""


def mismatch(model: dict[str, torch.Tensor], checkpoint: dict[str, torch.Tensor]) -> Optional[str]:
    """Why `checkpoint` (name -> tensor) cannot load into a model of state `model`, or None."""
    for name, theirs in checkpoint.items():
        ours = model.get(name)
        if ours is not None and ours.shape != theirs.shape:
            shapes = f"{name} is {list(theirs.shape)} in the checkpoint, {list(ours.shape)} here"
            return f"{shapes}: {_fix(name, theirs.shape, ours.shape)}"
    missing = [n for n in model if n not in checkpoint]
    extra = [n for n in checkpoint if n not in model]
    if any(".moe." in n for n in missing) and any(n.endswith(".fc1.weight") for n in extra):
        return (f"the checkpoint is a dense encoder ({extra[0]}), this model has MoE layers "
                f"({missing[0]}): upcycle it with omoe-upcycle, or train it dense with "
                "--moe-freq 0")
    if any(".moe." in n for n in extra) and any(n.endswith(".fc1.weight") for n in missing):
        return (f"the checkpoint has MoE layers ({extra[0]}), this model has a dense FFN there "
                f"({missing[0]}): pass the --moe-freq (and --moe-experts) it was made with")
    if missing or extra:
        which = f"the checkpoint lacks {missing[0]}" if missing else f"this model lacks {extra[0]}"
        return (f"{which} ({len(missing)} missing, {len(extra)} unexpected tensors): pass the "
                "--arch, --encoder-layers and --moe-* options the checkpoint was made with")
    return None


def _fix(name: str, theirs: torch.Size, ours: torch.Size) -> str:
    if name.endswith("embed_tokens.weight"):
        return (f"the checkpoint's dictionary has {theirs[0]} symbols, the data's {ours[0]}: "
                "binarise the data with the checkpoint's dictionary (omoe-prepare-data --srcdict)")
    if name.startswith("classification_heads.") and name.endswith("out_proj.weight"):
        return f"the checkpoint's head has {theirs[0]} outputs: pass --num-classes {theirs[0]}"
    if name.endswith("embed_positions.weight"):
        return "pass the --max-positions the checkpoint was made with"
    if (".experts." in name or ".router." in name) and theirs[0] != ours[0]:
        return f"pass --moe-experts {theirs[0]}"
    if name.endswith("experts.fc1_weight") or name.endswith("experts.fc1_bias"):
        return f"pass --moe-expert-ffn-dim {theirs[1]}"
    return "pass the --arch and --encoder-* options the checkpoint was made with"
