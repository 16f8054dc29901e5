"""One run of the converged comparison in its directory: fairseq-train in resumable segments
with their wall time (RUN/run.json), what the finished run reached, and its test score
(scripts/compare_optimizers.py drives them from the repository's root: options hold paths
relative to it)."""

import json
import os
import re
import shlex
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

BIN = Path(sys.executable).parent
POLL_S = 2  # how often a running segment's wall time is written down


class RunFailed(RuntimeError):
    """A run cannot go on: its data is missing or a fairseq tool failed (the message says
    which, with the tool's last output)."""


def option(options: list[str], name: str) -> Optional[str]:
    """The value of an option's last occurrence (the one fairseq takes), or None."""
    at = [i for i, o in enumerate(options[:-1]) if o == name]
    return options[at[-1] + 1] if at else None


def train_size(data: Path) -> int:
    """The examples of the binarised training split, read from the header of its fairseq
    (mmap) index: no fairseq import for a number."""
    index = data / "input0" / "train.idx"
    with open(index, "rb") if index.exists() else open(os.devnull, "rb") as f:
        head = f.read(26)
    if head[:9] != b"MMIDIDX\x00\x00":
        raise RunFailed(f"{data} has no binarised training split (fairseq's mmap {index})")
    return struct.unpack("<Q", head[18:26])[0]  # magic 9, version 8, dtype 1, length 8 bytes


def commit() -> str:
    """HEAD, with "-dirty" if omoe_plugin/ or scripts/ have changes it lacks (read without
    taking git's index lock: other work may be going on in the checkout)."""
    git = ["git", "--no-optional-locks"]
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
    changed = subprocess.run([*git, "status", "--porcelain", "--", "omoe_plugin", "scripts"],
                             capture_output=True, text=True)
    return head.stdout.strip() + ("-dirty" if changed.stdout.strip() else "")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def load_state(run_dir: Path, options: list[str]) -> dict:
    """The run's run.json: its options, the wall time and commit of every training segment,
    whether training has finished, and what it reached once it has (`summary`)."""
    path = run_dir / "run.json"
    if not path.exists():
        return {"options": options, "seconds": [], "commits": [], "trained": False,
                "summary": None}
    return json.loads(path.read_text())


def save_state(run_dir: Path, state: dict) -> None:
    """Replace run.json whole (a kill leaves the old one or the new one)."""
    tmp = run_dir / "run.json.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, run_dir / "run.json")


def _die_with_parent() -> None:
    """In the child: be killed when the comparison dies, however it dies (Linux)."""
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def train(data: Path, options: list[str], run_dir: Path, state: dict) -> None:
    """fairseq-train (its --patience resumable: omoe_plugin.analysis.patience) into run_dir
    as one more segment of the run: it resumes from checkpoint_last.pt if there (fairseq then
    ignores --finetune-from-model). The segment's wall time goes to run.json as it runs, so
    a kill loses at most POLL_S of it. Raises RunFailed, with the log's tail, if it fails."""
    command = [sys.executable, "-m", "omoe_plugin.analysis.patience", str(data), *options,
               "--save-dir", str(run_dir / "checkpoints"),
               "--tensorboard-logdir", str(run_dir / "tensorboard")]
    state["seconds"].append(0.0)
    state["commits"].append(commit())
    started = time.monotonic()
    with open(run_dir / "train.log", "a") as log:
        log.write(f"=== segment {len(state['seconds'])}: {shlex.join(command)}\n")
        log.flush()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        while True:
            try:
                code = proc.wait(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                state["seconds"][-1] = time.monotonic() - started
                save_state(run_dir, state)
    state["seconds"][-1] = time.monotonic() - started
    state["trained"] = code == 0
    save_state(run_dir, state)
    if code != 0:
        tail = (run_dir / "train.log").read_text()[-3000:]
        raise RunFailed(f"fairseq-train failed in {run_dir} (exit {code}):\n{tail}")


def summary(run_dir: Path, data: Path, options: list[str]) -> dict:
    """What the finished run reached, from its checkpoints: updates to the best validation
    (the last of equal ones: fairseq replaces checkpoint_best.pt on a tie), total updates,
    the best validation score, and the experts' similarity in checkpoint_best.pt on the
    validation split (omoe-analyze's means over layers; displacements from the start
    checkpoint; None for a dense model)."""
    from ..convert.safe_read import read_checkpoint
    from .analyze import expert_similarity

    best, last = (read_checkpoint(run_dir / "checkpoints" / f"checkpoint_{n}.pt")
                  for n in ("best", "last"))
    result = {"best_updates": best["optimizer_history"][-1]["num_updates"],
              "updates": last["optimizer_history"][-1]["num_updates"],
              "valid": float(best["extra_state"]["val_loss"]),
              "cka": None, "cos": None, "delta": None, "room": None}
    del best, last
    if option(options, "--moe-freq") != "0":
        start = option(options, "--finetune-from-model")
        layers = expert_similarity(run_dir / "checkpoints" / "checkpoint_best.pt", data,
                                   start=None if start is None else Path(start))
        mean = lambda key: sum(r[key] for r in layers) / len(layers)  # noqa: E731
        result.update(cka=mean("mean_cka"), cos=mean("mean_cos"))
        if start is not None:
            result.update(delta=mean("mean_delta"), room=mean("mean_cos") - mean("mean_apart"))
    return result


def curve(run_dir: Path, metric: str) -> list[list[float]]:
    """The run's validation curve from its log, [updates, score] of every validation in
    order; a validation that a resumed segment repeated (its checkpoint was not written before
    the kill) counts once."""
    scores = {}
    for line in (run_dir / "train.log").read_text().splitlines():
        if "valid on 'valid' subset" in line:
            score = re.search(rf"\| {re.escape(metric)} (-?[\d.]+) \|", line)
            updates = re.search(r"\| num_updates (\d+)", line)
            if score and updates:
                scores[int(updates.group(1))] = float(score.group(1))
    return [[n, scores[n]] for n in sorted(scores)]


def majority_share(data: Path, split: str) -> float:
    """The share (%) of the split's most frequent class label: the accuracy a classifier
    reaches by always answering it (binarised labels, data/label/SPLIT)."""
    from collections import Counter

    from fairseq.data import data_utils

    labels = data_utils.load_indexed_dataset(str(data / "label" / split))
    if labels is None:
        raise RunFailed(f"{data} has no binarised {split} labels (label/{split})")
    counts = Counter(int(label[0]) for label in labels)
    return round(100 * max(counts.values()) / sum(counts.values()), 2)


def drop_resume_checkpoints(run_dir: Path) -> None:
    """Delete every checkpoint but checkpoint_best.pt, and its optimizer state (two thirds of
    an AdamW checkpoint): only resuming needed them. Safe to repeat after a kill."""
    import torch

    from ..convert.safe_read import read_checkpoint

    for stale in (run_dir / "checkpoints").glob("checkpoint_*.pt"):
        if stale.name != "checkpoint_best.pt":
            stale.unlink()
    best = run_dir / "checkpoints" / "checkpoint_best.pt"
    state = read_checkpoint(best)
    if state.pop("last_optimizer_state", None) is not None:
        slim = best.with_suffix(".slim")
        torch.save(state, slim)
        os.replace(slim, best)  # the whole checkpoint until this instant


def test_score(run_dir: Path, data: Path, task: list[str], metric: str) -> float:
    """checkpoint_best.pt's score on the test split (fairseq-validate)."""
    test = subprocess.run(
        [str(BIN / "fairseq-validate"), str(data), *task, "--path",
         str(run_dir / "checkpoints" / "checkpoint_best.pt"), "--valid-subset", "test",
         "--omoe-similarity-tokens", "0", "--batch-size", "64"],
        capture_output=True, text=True)
    if test.returncode != 0:
        raise RunFailed(f"scoring {run_dir} on the test split failed:\n{test.stderr[-3000:]}")
    return float(re.findall(rf"\| {metric} ([\d.]+)", test.stderr + test.stdout)[-1])
