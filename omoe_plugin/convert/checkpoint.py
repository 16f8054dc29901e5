"""omoe_roberta encoder checkpoints in fairseq's format (what `fairseq-train
--finetune-from-model` reads), written by the importers, `omoe-upcycle` and `omoe-consolidate`
and read by the project's tools through `read_model_checkpoint` (`safe_read.read_checkpoint`,
expert-parallel shards joined). Only tensors and plain containers are written."""

import dataclasses
from pathlib import Path

import torch

from ..models import OMoERobertaConfig
from .consolidate import parse_shard, read_shards
from .safe_read import read_checkpoint


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
    write_checkpoints({Path(path): state})


def write_checkpoints(files: dict[Path, dict]) -> None:
    """torch.save each state to its path, all or nothing: every file is written under a
    temporary name first and renamed into place once all are, so a failure (a full disk, a
    killed job) never leaves a half-written checkpoint under a final name."""
    temporary = {path: path.with_name(path.name + ".tmp") for path in map(Path, files)}
    try:
        for path, state in files.items():
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            torch.save(state, temporary[Path(path)])
        for path, tmp in temporary.items():
            tmp.replace(path)
    finally:
        for tmp in temporary.values():
            tmp.unlink(missing_ok=True)


def read_model_checkpoint(path: Path) -> dict:
    """The checkpoint dict at path as the project's tools read it (omoe-export, omoe-analyze,
    omoe-upcycle): through `read_checkpoint`; for one shard of an expert-parallel save
    (`<name>-expert{r}of{N}.pt`), the whole model joined in memory from all N shards
    (`consolidate.read_shards`), without the optimizer state these tools do not use."""
    if parse_shard(path) is None:
        return read_checkpoint(path)
    return read_shards(path, optimizer=False)[0]


def load_encoder_checkpoint(path: Path) -> tuple[OMoERobertaConfig, dict]:
    """(model config, model state) of an omoe_roberta checkpoint (`read_model_checkpoint`'s
    errors, plus a clear one for a checkpoint of another model)."""
    state = read_model_checkpoint(path)
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
