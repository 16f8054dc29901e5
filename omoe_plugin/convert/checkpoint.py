"""Checkpoint I/O: the one place this project reads checkpoints, and the encoder checkpoints in
fairseq's format that `fairseq-train --finetune-from-model` reads.

A checkpoint is untrusted input: it may come from another machine, be cut short by a killed
job, or carry a pickle payload that runs code when unpickled. Every loader of the project
(training resume and `--restore-file` through fairseq, `omoe-upcycle`, `omoe-analyze`, the
exporter) reads through `read_checkpoint`, which only ever calls
`torch.load(weights_only=True)` and turns every failure into a message that says what is
wrong with the file. `install_safe_loading` routes fairseq's own loader through it, and
makes fairseq's checkpoint copies atomic. Only tensors and plain containers are written.
"""

import dataclasses
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from fairseq import checkpoint_utils
from fairseq.dataclass.utils import overwrite_args_by_name
from fairseq.file_io import PathManager
from omegaconf import OmegaConf

from ..models import OMoERobertaConfig


def read_checkpoint(path: Path) -> dict:
    """The dict stored in a checkpoint file, read with `torch.load(weights_only=True)`.

    Raises FileNotFoundError for a missing file and ValueError, naming the file and the
    reason, for one that carries objects other than tensors and plain containers (code is
    never run), is truncated or not a torch checkpoint, or does not hold a dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if unsafe is None:  # a pickle stream torch cannot read at all
            raise ValueError(f"{path} is not a torch checkpoint (another format?)") from None
        raise ValueError(
            f"{path} refers to {unsafe.group(1)}: it holds objects other than tensors and plain "
            "containers, which this project never unpickles (a checkpoint is untrusted input "
            "and unpickling it could run code)"
        ) from None
    except Exception as e:  # noqa: BLE001 - any failure of torch's reader means a bad file
        raise ValueError(
            f"{path} is not a readable torch checkpoint (truncated, e.g. by a killed job, or "
            f"another format): {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a checkpoint dict")
    return state


def load_checkpoint_to_cpu(
    path: str, arg_overrides: Optional[dict[str, Any]] = None, load_on_all_ranks: bool = False
) -> dict:
    """Drop-in for fairseq's `checkpoint_utils.load_checkpoint_to_cpu` (training resume,
    `--restore-file`, `--finetune-from-model`, fairseq-validate's `--path`) that reads through
    `read_checkpoint` and refuses files that are not fairseq checkpoints with a message.

    fairseq's own version calls `torch.load` without `weights_only`, which one of torch's
    environment variables turns into a full unpickling; this one never unpickles. Checkpoints whose configuration is an argparse Namespace (fairseq < 0.10)
    are refused for the same reason. `load_on_all_ranks` is accepted for compatibility:
    reading a local file needs no synchronisation.
    """
    state = read_checkpoint(PathManager.get_local_path(path))
    if not isinstance(state.get("model"), dict):
        raise ValueError(f"{path} is not a fairseq checkpoint: it has no 'model' state dict")
    if state.get("cfg") is not None:
        state["cfg"] = OmegaConf.create(state["cfg"], flags={"allow_objects": True})
        if arg_overrides is not None:
            overwrite_args_by_name(state["cfg"], arg_overrides)
    try:
        return checkpoint_utils._upgrade_state_dict(state)
    except (KeyError, IndexError, TypeError) as e:
        raise ValueError(
            f"{path} is not a fairseq training checkpoint: its training state lacks {e}"
        ) from None


_fairseq_copy = PathManager.copy  # fairseq's own, for remote paths


def atomic_copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
    """fairseq's `PathManager.copy` for local files, through a temporary file renamed into
    place: fairseq saves one checkpoint atomically and copies it to the others
    (`checkpoint_last.pt`, `checkpoint_best.pt`); a job killed during a plain copy would leave
    half a file under that name, this leaves the previous one intact."""
    if PathManager.path_requires_pathmanager(dst_path):
        return _fairseq_copy(src_path, dst_path, overwrite)
    if os.path.exists(dst_path) and not overwrite:
        return False
    tmp = f"{dst_path}.copying"
    try:
        shutil.copyfile(src_path, tmp)
        os.replace(tmp, dst_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return True


def install_safe_loading() -> None:
    """Make fairseq read every checkpoint through `load_checkpoint_to_cpu` and copy
    checkpoints with `atomic_copy` (done when the plugin registers with fairseq, i.e. by
    `--user-dir user_dir`)."""
    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu
    PathManager.copy = staticmethod(atomic_copy)


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
    """(model config, model state) of an omoe_roberta checkpoint (`read_checkpoint`'s
    errors, plus a clear one for a checkpoint of another model)."""
    state = read_checkpoint(path)
    return encoder_config(state, path), state["model"]


def encoder_config(state: dict, path: Path) -> OMoERobertaConfig:
    """The model configuration of a checkpoint dict read from path; a clear error if it is
    not an omoe_roberta checkpoint."""
    cfg = state.get("cfg")
    model_cfg = cfg.get("model") if isinstance(cfg, dict) else None
    if (not isinstance(model_cfg, dict) or not isinstance(state.get("model"), dict)
            or not str(model_cfg.get("_name")).startswith("omoe_roberta")):
        raise ValueError(f"{path} is not an omoe_roberta checkpoint")
    fields = {f.name for f in dataclasses.fields(OMoERobertaConfig)}
    return OMoERobertaConfig(**{k: v for k, v in model_cfg.items() if k in fields and k != "_name"})
