"""End to end with the real fairseq CLIs on the real movie-review data: fairseq-train with
the plugin trains, validates, logs to TensorBoard, saves, and resumes exactly; fairseq-validate
scores the checkpoint; bad MoE options stop with a message naming the option."""

import re

import pytest
import torch

from tests.cli import (
    USER_DIR,
    assert_same_model,
    checkpoint,
    failed_train,
    output,
    run,
    scalar_tags,
    setup_error,
    straight_and_resumed,
    train,
)

pytestmark = pytest.mark.slow

TASK = ["--user-dir", USER_DIR, "--task", "sentence_prediction", "--num-classes", "2",
        "--init-token", "0", "--max-positions", "128", "--cpu", "--num-workers", "0"]
TRAIN = TASK + [
    "--arch", "omoe_roberta_tiny", "--moe-experts", "4", "--moe-top-k", "2",
    "--criterion", "omoe_sentence_prediction", "--moe-z-loss-weight", "0.001",
    "--optimizer", "adam", "--lr", "1e-3", "--batch-size", "32", "--seed", "3",
    "--log-format", "simple", "--log-interval", "5", "--no-epoch-checkpoints",
]


@pytest.fixture(scope="module")
def runs(movie_reviews, tmp_path_factory):
    """20 updates straight, started afresh (what importing prints is checked), and 10 + resume
    from checkpoint_last.pt + 10, forked: the same weights either way."""
    data, _ = movie_reviews
    return (data, *straight_and_resumed(data, tmp_path_factory, TRAIN, 20, fresh=True))


def test_training_logs_task_and_moe_metrics(runs):
    out = output(runs[3]["straight"])
    for key in ("accuracy=", "moe_lb=", "moe_z=", "moe_share_e3=", "moe_max_load="):
        assert key in out
    # no dependency noise, and the experts counted as experts
    assert "tensorboardX" not in out and "Warning" not in out
    weights = checkpoint(runs[1])["model"]
    experts = sum(v.numel() for k, v in weights.items() if ".moe.experts." in k)
    shared = sum(v.numel() for k, v in weights.items() if ".moe.experts." not in k)
    assert f"num. expert model params: {experts:,} (num. trained: {experts:,})" in out
    assert f"num. shared model params: {shared:,} " in out
    assert "valid on 'valid' subset" in out and "num_updates 20" in out


def test_resume_continues_exactly(runs):
    _, straight, split, logs = runs
    out = output(logs["resumed"])
    assert "Loaded checkpoint" in out and "@ 10 updates" in out
    assert any("moe.experts.fc1_weight" in k for k in assert_same_model(straight, split))


def without_times(log: str, run_dir) -> list[str]:
    """A run's lines without what differs between two runs of one command: clock times,
    speeds, durations, the run's directory."""
    log = log.replace(str(run_dir), "RUN")
    log = re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "TIME", log, flags=re.M)
    log = re.sub(r"\b(wps|ups|wall|train_wall|gb_free)([ =])[\d.]+", r"\1\2X", log)
    return re.sub(r"\b(took|in) [\d.]+ seconds", r"\1 X seconds", log).splitlines()


def test_a_forked_run_prints_and_trains_what_a_fresh_one_does(runs, tmp_path):
    """The end-to-end tests fork the console scripts (tests/cli.py): forked, the straight
    run's command prints the same lines, times aside, and ends with the same weights."""
    data, straight, _, logs = runs
    forked = train(data, tmp_path, TRAIN, 20)
    assert without_times(output(forked), tmp_path) == without_times(output(logs["straight"]),
                                                                     straight)
    assert_same_model(straight, tmp_path)


def test_tensorboard_records_moe_scalars(runs):
    tags = scalar_tags(runs[1])
    for tag in ("train_inner/moe_lb", "train_inner/moe_max_load", "train_inner/moe_share_e0",
                "valid/accuracy", "valid/moe_lb"):
        assert tag in tags


def test_fairseq_validate_scores_the_checkpoint(runs):
    """Its test accuracy is the checkpoint's, example by example, computed here apart (every
    example scored: fairseq's sentence_prediction, the checkpoint's task, drops a last batch
    that is not a multiple of --required-batch-size-multiple)."""
    from fairseq.data import Dictionary, data_utils

    from omoe_plugin.export.classifier import ExportedClassifier, load_classifier

    data, straight, _, _ = runs
    checkpoint = straight / "checkpoints" / "checkpoint_best.pt"
    result = run("fairseq-validate", str(data), *TASK, "--criterion", "omoe_sentence_prediction",
                 "--path", str(checkpoint), "--valid-subset", "test", "--batch-size", "64",
                 "--required-batch-size-multiple", "1")
    out = output(result)
    assert "valid on 'test' subset" in out and "moe_lb" in out
    printed = float(re.findall(r"\| accuracy ([\d.]+)", out)[-1])
    model, info = load_classifier(checkpoint)
    net = ExportedClassifier(model)
    words = Dictionary.load(str(data / "input0" / "dict.txt"))
    labels = Dictionary.load(str(data / "label" / "dict.txt"))
    texts = data_utils.load_indexed_dataset(str(data / "input0" / "test"), words)
    golds = data_utils.load_indexed_dataset(str(data / "label" / "test"), labels)
    right = 0
    with torch.no_grad():
        for i in range(len(texts)):
            logits = net(torch.cat([torch.tensor([words.bos()]), texts[i]])[None])[0][0]
            right += labels[int(golds[i][0])] == info.labels[int(logits.argmax())]
    assert printed == pytest.approx(100 * right / len(texts), abs=0.05)


def test_omoe_analyze_says_how_to_write_its_pictures(runs):
    data, straight, _, _ = runs
    result = run("omoe-analyze", str(straight / "checkpoints" / "checkpoint_best.pt"),
                 "--data", str(data), "--tokens", "64")
    assert "| mean |" in result.stdout and "written with --out DIR" in result.stdout


@pytest.mark.parametrize(
    "bad,option",
    ((["--moe-experts", "2", "--moe-top-k", "3"], "--moe-top-k"),
     (["--moe-experts", "0"], "--moe-experts"),
     (["--moe-freq", "-1"], "--moe-freq")),
)
def test_bad_moe_option_stops_with_message(movie_reviews, bad, option):
    assert option in setup_error(movie_reviews[0], [*TRAIN, *bad])


def test_a_bad_option_stops_fairseq_train_with_its_message(movie_reviews, tmp_path):
    bad = ["--moe-experts", "2", "--moe-top-k", "3"]
    assert "--moe-top-k" in failed_train(movie_reviews[0], [*TRAIN, "--max-update", "1", *bad],
                                         tmp_path)
    assert not list(tmp_path.glob("*.pt"))
