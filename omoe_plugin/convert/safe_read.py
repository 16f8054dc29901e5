"""The one place this project reads checkpoints.

A checkpoint is untrusted input: it may come from another machine, be cut short by a killed
job, or carry a pickle payload that runs code when unpickled. Every loader of the project
(training resume and `--restore-file` through fairseq, `omoe-upcycle`, `omoe-analyze`, the
exporter) reads through `read_checkpoint`, which only ever calls
`torch.load(weights_only=True)` and turns every failure into a message that says what is
wrong with the file.
"""

import pickle
import re
from pathlib import Path

import torch


def read_checkpoint(path: Path, allowed: tuple[type, ...] = ()) -> dict:
    """The dict stored in a checkpoint file, read with `torch.load(weights_only=True)`.

    allowed: classes besides tensors and plain containers the file may hold, each itself a
    plain container (argparse.Namespace, in which older fairseq checkpoints keep options).

    Raises FileNotFoundError for a missing file and ValueError, naming the file and the
    reason, for one that carries objects other than tensors and plain containers (code is
    never run), is truncated or not a torch checkpoint, or does not hold a dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with open(path, "rb") as f:
        head = f.read(8)
    if not head.startswith((b"PK", b"\x80")):  # torch's zip archive, or a legacy pickle
        what = "it is empty" if not head else f"it starts with {head!r}: a text file?"
        raise ValueError(f"{path} is not a torch checkpoint: neither a zip archive nor a "
                         f"pickle ({what})")
    try:
        with torch.serialization.safe_globals(list(allowed)):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch names the global either way, the second for a module it blocks (os, posix)
        unsafe = re.search(r"(?:Unsupported global: |unsupported )GLOBAL (\S+)", str(e))
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
