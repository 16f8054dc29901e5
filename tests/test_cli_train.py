"""End to end with the real fairseq CLIs on the real movie-review data: fairseq-train with
the plugin trains, validates, logs to TensorBoard, saves, and resumes exactly; fairseq-validate
scores the checkpoint; bad MoE options stop with a message naming the option."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
USER_DIR = str(Path(__file__).resolve().parents[1] / "user_dir")
TASK = ["--user-dir", USER_DIR, "--task", "sentence_prediction", "--num-classes", "2",
        "--init-token", "0", "--max-positions", "128", "--cpu", "--num-workers", "0"]
TRAIN = TASK + [
    "--arch", "omoe_roberta_tiny", "--moe-experts", "4", "--moe-top-k", "2",
    "--criterion", "omoe_sentence_prediction", "--moe-z-loss-weight", "0.001",
    "--optimizer", "adam", "--lr", "1e-3", "--batch-size", "32", "--seed", "3",
    "--log-format", "simple", "--log-interval", "5", "--no-epoch-checkpoints",
]


def run(tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN / tool), *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{tool} failed:\n{result.stderr[-3000:]}")
    return result


def train(data: Path, run_dir: Path, max_update: int) -> subprocess.CompletedProcess:
    return run("fairseq-train", str(data), *TRAIN, "--max-update", str(max_update),
               "--save-dir", str(run_dir / "checkpoints"),
               "--tensorboard-logdir", str(run_dir / "tensorboard"))


@pytest.fixture(scope="module")
def runs(movie_reviews, tmp_path_factory):
    """20 updates straight, and 10 + resume from checkpoint_last.pt + 10."""
    data, _ = movie_reviews
    straight, split = tmp_path_factory.mktemp("straight"), tmp_path_factory.mktemp("split")
    logs = {"straight": train(data, straight, 20)}
    train(data, split, 10)
    logs["resumed"] = train(data, split, 20)
    return data, straight, split, logs


def params(checkpoint: Path) -> dict:
    return torch.load(checkpoint, weights_only=True)["model"]


def test_training_logs_task_and_moe_metrics(runs):
    _, _, _, logs = runs
    out = logs["straight"].stderr + logs["straight"].stdout
    for key in ("accuracy=", "moe_lb=", "moe_z=", "moe_share_e3=", "moe_max_load="):
        assert key in out
    assert "valid on 'valid' subset" in out and "num_updates 20" in out


def test_resume_continues_exactly(runs):
    _, straight, split, logs = runs
    out = logs["resumed"].stderr + logs["resumed"].stdout
    assert "Loaded checkpoint" in out and "@ 10 updates" in out
    a = params(straight / "checkpoints" / "checkpoint_last.pt")
    b = params(split / "checkpoints" / "checkpoint_last.pt")
    assert a.keys() == b.keys() and any("moe.experts.fc1_weight" in k for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_tensorboard_records_moe_scalars(runs):
    _, straight, _, _ = runs
    tags = set()
    for sub in ("train_inner", "valid"):
        events = EventAccumulator(str(straight / "tensorboard" / sub))
        events.Reload()
        tags |= {f"{sub}/{t}" for t in events.Tags()["scalars"]}
    for tag in ("train_inner/moe_lb", "train_inner/moe_max_load", "train_inner/moe_share_e0",
                "valid/accuracy", "valid/moe_lb"):
        assert tag in tags


def test_fairseq_validate_scores_the_checkpoint(runs):
    data, straight, _, _ = runs
    result = run("fairseq-validate", str(data), *TASK, "--criterion", "omoe_sentence_prediction",
                 "--path", str(straight / "checkpoints" / "checkpoint_best.pt"),
                 "--valid-subset", "test", "--batch-size", "64")
    out = result.stderr + result.stdout
    assert "valid on 'test' subset" in out and "accuracy" in out and "moe_lb" in out


@pytest.mark.parametrize(
    "bad,option",
    ((["--moe-experts", "2", "--moe-top-k", "3"], "--moe-top-k"),
     (["--moe-experts", "0"], "--moe-experts"),
     (["--moe-freq", "-1"], "--moe-freq")),
)
def test_bad_moe_option_stops_with_message(movie_reviews, tmp_path, bad, option):
    data, _ = movie_reviews
    result = run("fairseq-train", str(data), *TRAIN, "--max-update", "1", *bad,
                 "--save-dir", str(tmp_path), check=False)
    assert result.returncode != 0
    assert option in result.stderr.splitlines()[-1]
    assert not list(tmp_path.glob("*.pt"))
