"""Helpers for the end-to-end tests: run the real console scripts of this virtualenv."""

import signal
import subprocess
import sys
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

BIN = Path(sys.executable).parent
USER_DIR = str(Path(__file__).resolve().parents[1] / "user_dir")


def run(tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN / tool), *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{tool} failed:\n{result.stderr[-3000:]}")
    return result


def output(result: subprocess.CompletedProcess) -> str:
    return result.stderr + result.stdout


def failed_train(data: Path, args: list[str], save_dir: Path) -> str:
    """Run fairseq-train expecting it to fail; the last line it printed (the error)."""
    result = run("fairseq-train", str(data), *args, "--save-dir", str(save_dir), check=False)
    assert result.returncode != 0, "fairseq-train should have stopped"
    return result.stderr.strip().splitlines()[-1]


def train_args(data: Path, run_dir: Path, args: list[str], max_update: int) -> list[str]:
    """fairseq-train's arguments to train into run_dir/checkpoints and run_dir/tensorboard."""
    return [str(data), *args, "--max-update", str(max_update),
            "--save-dir", str(run_dir / "checkpoints"),
            "--tensorboard-logdir", str(run_dir / "tensorboard")]


def train(data: Path, run_dir: Path, args: list[str], max_update: int) -> subprocess.CompletedProcess:
    """fairseq-train into run_dir (resumes from its checkpoint_last.pt if there)."""
    return run("fairseq-train", *train_args(data, run_dir, args, max_update))


def train_killed(data: Path, run_dir: Path, args: list[str], max_update: int,
                 saved_at: int) -> str:
    """fairseq-train into run_dir, killed with SIGKILL (no clean shutdown, as a crash or a
    cluster pre-emption) as soon as it reports the checkpoint of update `saved_at` written;
    what it printed. Deterministic when `saved_at` is a multiple of --save-interval-updates."""
    command = [str(BIN / "fairseq-train"), *train_args(data, run_dir, args, max_update)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "Saved checkpoint" in line and f"@ {saved_at} updates" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    proc.stdout.close()
    log = "".join(lines)
    assert proc.returncode == -signal.SIGKILL, f"fairseq-train was not killed:\n{log[-3000:]}"
    return log


def straight_and_resumed(data: Path, tmp_path_factory, args: list[str], updates: int,
                         resume_args: tuple[str, ...] = ()):
    """`updates` updates straight, and updates/2 + resume from checkpoint_last.pt + the rest:
    (straight run dir, split run dir, {"straight": log, "resumed": log})."""
    straight, split = tmp_path_factory.mktemp("straight"), tmp_path_factory.mktemp("split")
    logs = {"straight": train(data, straight, args, updates)}
    train(data, split, args, updates // 2)
    logs["resumed"] = train(data, split, [*args, *resume_args], updates)
    return straight, split, logs


def checkpoint(run_dir: Path, name: str = "checkpoint_last.pt") -> dict:
    return torch.load(run_dir / "checkpoints" / name, weights_only=True)


def scalar_tags(run_dir: Path) -> set[str]:
    """Every "{subset}/{name}" scalar written to run_dir/tensorboard."""
    tags = set()
    for sub in (run_dir / "tensorboard").iterdir():
        events = EventAccumulator(str(sub))
        events.Reload()
        tags |= {f"{sub.name}/{t}" for t in events.Tags()["scalars"]}
    return tags
