"""fairseq's checkpoint I/O made safe, process-wide (`install_safe_loading`, called when the
plugin registers with fairseq): its loader reads through `safe_read.read_checkpoint` and
never unpickles, and its checkpoint copies are atomic."""

import os
import shutil
from typing import Any, Optional

from fairseq import checkpoint_utils
from fairseq.dataclass.utils import overwrite_args_by_name
from fairseq.file_io import PathManager
from omegaconf import OmegaConf

from .safe_read import read_checkpoint


def load_checkpoint_to_cpu(
    path: str, arg_overrides: Optional[dict[str, Any]] = None, load_on_all_ranks: bool = False
) -> dict:
    """Drop-in for fairseq's `checkpoint_utils.load_checkpoint_to_cpu` (training resume,
    `--restore-file`, `--finetune-from-model`, fairseq-validate's `--path`) that reads through
    `read_checkpoint` and refuses files that are not fairseq checkpoints with a message.

    fairseq's own version calls `torch.load` without `weights_only`, which one of torch's
    environment variables turns into a full unpickling; this one never unpickles.
    Checkpoints whose configuration is an argparse Namespace (fairseq < 0.10) are refused
    for the same reason. `load_on_all_ranks` is accepted for compatibility:
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
    `--user-dir user_dir`).

    Both replace fairseq functions process-wide because fairseq offers no hook: its trainer,
    fairseq-validate and `--finetune-from-model` call `checkpoint_utils.load_checkpoint_to_cpu`
    by module attribute, and its checkpoint saving calls `PathManager.copy`. Without the first,
    a checkpoint carrying a pickle payload runs its code when fairseq loads it
    (tests/test_cli_reliability.py, test_every_loader_refuses_a_code_carrying_checkpoint...;
    tests/convert/test_safe_loading.py); without the second, a job killed while fairseq copies
    checkpoint_last.pt leaves half a file that the next resume fails on
    (test_an_interrupted_checkpoint_copy_leaves_the_previous_file)."""
    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu
    PathManager.copy = staticmethod(atomic_copy)
