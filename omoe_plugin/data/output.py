"""The output directory of `omoe-prepare-data`: built whole in a folder beside it
(`.NAME.partial-HOST-PID-RANDOM`) and renamed into place once complete, so OUT is never
half-written; made with the permissions of any new folder (the umask's, e.g. 0755 under umask
022, not the 0700 of a private temporary folder); and the partial folders a killed run left
beside OUT (its process gone) removed at the next run for the same OUT.
"""

import logging
import os
import re
import secrets
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

logger = logging.getLogger(__name__)


def partial_name(out_dir: Path, pid: int) -> str:
    """The name of a folder in which process pid of this machine builds out_dir."""
    return f".{out_dir.name}.partial-{socket.gethostname()}-{pid}-{secrets.token_hex(4)}"


def stale_partials(out_dir: Path) -> list[Path]:
    """The partial folders of out_dir (and their `-old` leftovers) whose process no longer
    runs: of this machine with a pid that is gone, or named as versions before the pid was
    in the name named them (`.NAME.partial-XXXXXXXX`). Another machine's are left alone."""
    prefix = f".{out_dir.name}.partial-"
    mine = re.compile(rf"{re.escape(socket.gethostname())}-(\d+)-[0-9a-f]{{8}}(-old)?")
    stale = []
    for path in out_dir.parent.glob(f"{glob_escape(prefix)}*"):
        rest = path.name[len(prefix):]
        ours = mine.fullmatch(rest)
        if ours and not running(int(ours.group(1))):
            stale.append(path)
        elif not ours and re.fullmatch(r"[A-Za-z0-9_]{8}(-old)?", rest):  # tempfile's names
            stale.append(path)
    return sorted(stale)


def glob_escape(text: str) -> str:
    """text with glob's special characters matched literally."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def running(pid: int) -> bool:
    """Whether process pid exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextmanager
def building(out_dir: Path) -> Iterator[Path]:
    """A folder beside out_dir to build in; it replaces out_dir when the block completes and
    is removed if the block fails, so out_dir is never half-written (see the module doc)."""
    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in stale_partials(out_dir):
        logger.warning(f"removing {stale}, left by an interrupted omoe-prepare-data run")
        shutil.rmtree(stale, ignore_errors=True)
    work = out_dir.parent / partial_name(out_dir, os.getpid())
    work.mkdir(mode=0o777)  # less the umask, as any new folder
    try:
        yield work
        _replace(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _replace(new: Path, out_dir: Path) -> None:
    """Move the finished directory new to out_dir, replacing what was there."""
    if out_dir.exists():
        old = new.with_name(new.name + "-old")
        out_dir.rename(old)
        new.rename(out_dir)
        shutil.rmtree(old)
    else:
        new.rename(out_dir)
