"""End to end: fairseq-train --task omoe_sentence_prediction --optimizer omoe on the real
movie-review data: alternating phases, TensorBoard scalars read back, exact resume of
parameters and OMoE state across --restore-file, and clear errors for bad settings."""

import re

import pytest
import torch

from tests.cli import (
    USER_DIR,
    checkpoint,
    failed_train,
    output,
    scalar_tags,
    setup_error,
    straight_and_resumed,
)

pytestmark = pytest.mark.slow

OMOE = [
    "--user-dir", USER_DIR, "--task", "omoe_sentence_prediction", "--num-classes", "2",
    "--init-token", "0", "--max-positions", "128", "--cpu", "--num-workers", "0",
    "--arch", "omoe_roberta_tiny", "--moe-experts", "4", "--moe-top-k", "1",
    "--criterion", "omoe_sentence_prediction",
    "--optimizer", "omoe", "--lr", "1e-3", "--omoe-alpha", "0.01",
    "--omoe-accumulate-steps", "2", "--omoe-orthogonal-steps", "4", "--omoe-space", "inputs",
    "--omoe-stat", "pca",
    "--batch-size", "32", "--seed", "5", "--log-format", "simple", "--log-interval", "3",
    "--no-epoch-checkpoints", "--validate-interval-updates", "10",
]


@pytest.fixture(scope="module")
def runs(movie_reviews, tmp_path_factory):
    """20 updates straight, and 10 (inside an orthogonal phase) + --restore-file + 10."""
    data, _ = movie_reviews
    resume = ("--restore-file", "checkpoint_last.pt")
    return (data, *straight_and_resumed(data, tmp_path_factory, OMOE, 20, resume))


def test_phases_alternate_and_projectors_are_logged(runs):
    out = output(runs[3]["straight"])
    # log interval 3, cycles of 2 + 4 updates: intervals of 1/3 and of only orthogonal updates
    assert {"0.33", "1"} <= set(re.findall(r"omoe_phase=([\d.]+)", out))
    assert "omoe_removed=" in out and "omoe_trace=" in out
    assert "omoe_sim_cka" in out and "omoe_sim_cos" in out and "omoe_sim_delta" in out


def test_resume_restores_parameters_and_omoe_state_exactly(runs):
    _, straight, split, logs = runs
    assert "@ 10 updates" in output(logs["resumed"])
    a, b = checkpoint(straight), checkpoint(split)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    sa, sb = a["last_optimizer_state"]["omoe"], b["last_optimizer_state"]["omoe"]
    assert sa["counters"] == sb["counters"] and sa["counters"]["projector_updates"] == 3  # updates 2, 8, 14
    for part in ("stats", "stat_steps", "factors"):
        assert sa[part].keys() == sb[part].keys() == {"0.fc1", "0.fc2", "1.fc1", "1.fc2"}
        for key in sa[part]:
            assert torch.equal(sa[part][key], sb[part][key]), (part, key)


def test_tensorboard_has_phase_projector_and_similarity_scalars(runs):
    tags = scalar_tags(runs[1])
    for tag in ("train_inner/omoe_phase", "train_inner/omoe_trace", "train_inner/omoe_removed",
                "valid/omoe_sim_cka", "valid/omoe_sim_cos", "valid/omoe_sim_delta",
                "valid/accuracy"):
        assert tag in tags, tag


def test_deltas_trains_logs_and_resumes_exactly(movie_reviews, tmp_path_factory):
    """--omoe-space deltas keeps no statistics: its directions are AdamW's first moments,
    which the checkpoint holds, so a resumed run still ends bit-identical."""
    data, _ = movie_reviews
    args = [a if a != "inputs" else "deltas" for a in OMOE]
    straight, split, logs = straight_and_resumed(data, tmp_path_factory, args, 12,
                                                 ("--restore-file", "checkpoint_last.pt"))
    out = output(logs["straight"])
    assert "omoe_removed=" in out and "omoe_trace=" not in out  # no statistics, no trace
    assert re.search(r"omoe_sim_delta -?[\d.]+", out)  # in [-1, 1]: apart can be negative
    a, b = checkpoint(straight), checkpoint(split)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    omoe = a["last_optimizer_state"]["omoe"]
    assert not omoe["stats"] and not omoe["factors"] and omoe["settings"]["space"] == "deltas"
    assert omoe["counters"]["projector_updates"] == 2  # the switches at updates 2 and 8


@pytest.mark.parametrize(
    "bad,message",
    ((["--omoe-alpha", "0"], "--omoe-alpha"),
     (["--omoe-orthogonal-steps", "0"], "--omoe-orthogonal-steps"),
     (["--omoe-space", "centred", "--omoe-stat", "mean"], "--omoe-space centred needs"),
     (["--moe-freq", "0"], "no expert weights")),
)
def test_bad_settings_stop_with_a_clear_message(movie_reviews, bad, message):
    assert message in setup_error(movie_reviews[0], [*OMOE, *bad])


def test_omoe_without_the_alternating_task_stops_fairseq_train(movie_reviews, tmp_path):
    bad = ["--task", "sentence_prediction"]
    assert "--task omoe_sentence_prediction" in failed_train(
        movie_reviews[0], [*OMOE, "--max-update", "2", *bad], tmp_path)
