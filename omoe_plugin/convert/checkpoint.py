"""Encoder checkpoints in fairseq's format: what `fairseq-train --finetune-from-model` reads.

Only tensors and plain containers are written, and checkpoints are only ever read with
`torch.load(weights_only=True)`: a checkpoint is untrusted input.
"""

import dataclasses
import pickle
import zipfile
from pathlib import Path

import torch

from ..models import OMoERobertaConfig


def save_encoder_checkpoint(path: Path, cfg: OMoERobertaConfig, model: dict) -> None:
    """Write an omoe_roberta model state as a fairseq checkpoint with no training state."""
    model_cfg = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "_name"}
    state = {
        "cfg": {"model": {"_name": "omoe_roberta", **model_cfg}},
        "model": model,
        "optimizer_history": [
            {"criterion_name": "none", "optimizer_name": "none", "lr_scheduler_state": {},
             "num_updates": 0}
        ],
        "last_optimizer_state": None,
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0, "version": 2}},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # never leave a half-written checkpoint under the final name


def load_encoder_checkpoint(path: Path) -> tuple[OMoERobertaConfig, dict]:
    """(model config, model state) of an omoe_roberta checkpoint, with a clear error for a
    missing, truncated, foreign or code-carrying file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{path} holds objects other than tensors and plain containers, which this project "
            f"never unpickles (a checkpoint is untrusted input): {str(e).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path} is not a readable torch checkpoint (truncated?): {e}") from None
    model_cfg = state.get("cfg", {}).get("model") if isinstance(state, dict) else None
    if not isinstance(model_cfg, dict) or not str(model_cfg.get("_name")).startswith("omoe_roberta"):
        raise ValueError(f"{path} is not an omoe_roberta checkpoint")
    fields = {f.name for f in dataclasses.fields(OMoERobertaConfig)}
    cfg = OMoERobertaConfig(**{k: v for k, v in model_cfg.items() if k in fields and k != "_name"})
    return cfg, state["model"]
