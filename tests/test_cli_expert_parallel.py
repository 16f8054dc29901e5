"""End to end, expert parallelism: fairseq-train --moe-expert-parallel-size N as 2 and 4 gloo
processes on the CPU, launched as the docs say, every process writing into one --save-dir.
Training with OMoE (orthogonal phases included) matches one process with the same global
batch, each expert-parallel rank writes its shard, a run killed with SIGKILL resumes exactly,
shards of two updates are refused, and exporting a shard gives the consolidated model's
ONNX outputs."""

import signal
import time

import pytest
import torch

from omoe_plugin.export.sentences import OMoEClassifier
from tests.cli import checkpoint, launch_ranks, output, run, train, train_data_parallel
from tests.test_cli_distributed import ARGS as DATA_PARALLEL_ARGS

pytestmark = [pytest.mark.slow, pytest.mark.expert_parallel]  # make test-expert-parallel

UPDATES = 12
ARGS = [*DATA_PARALLEL_ARGS, "--omoe-space", "deltas"]  # the default reading, weight-sized
TOLERANCE = dict(atol=1e-5, rtol=1e-4)  # as data parallelism: float32 sums in another order
LAYOUTS = {"2 workers, 2 shards": (2, 2), "4 workers, 2 shards": (4, 2),
           "4 workers, 4 shards": (4, 4)}


def ep_args(shards: int) -> list[str]:
    return [*ARGS, "--moe-expert-parallel-size", str(shards)]


def shards(run_dir, size: int, name: str = "checkpoint_last") -> list[dict]:
    return [checkpoint(run_dir, f"{name}-expert{r}of{size}.pt") for r in range(size)]


def joined_model(states: list[dict]) -> dict:
    """The experts of every shard joined; the shared tensors are the same in every shard."""
    model = {}
    for key in states[0]["model"]:
        parts = [s["model"][key] for s in states]
        if ".experts.fc" in key:
            model[key] = torch.cat(parts)
        else:
            assert all(torch.equal(p, parts[0]) for p in parts), key
            model[key] = parts[0]
    return model


@pytest.fixture(scope="module")
def single(movie_reviews, tmp_path_factory):
    """One process, the global batch of 2 and of 4 workers (--update-freq)."""
    runs = {}
    for workers in (2, 4):
        runs[workers] = tmp_path_factory.mktemp(f"single{workers}")
        train(movie_reviews[0], runs[workers], [*ARGS, "--update-freq", str(workers)], UPDATES)
    return runs


@pytest.fixture(scope="module")
def parallel(movie_reviews, tmp_path_factory):
    runs = {}
    for name, (workers, size) in LAYOUTS.items():
        runs[name] = tmp_path_factory.mktemp("ep")
        train_data_parallel(movie_reviews[0], runs[name], ep_args(size), UPDATES, workers,
                            every_rank=False)
    return runs


@pytest.mark.parametrize("layout", LAYOUTS)
def test_expert_parallel_training_matches_one_process(single, parallel, layout):
    workers, size = LAYOUTS[layout]
    states = shards(parallel[layout], size)
    assert sorted(p.name for p in (parallel[layout] / "checkpoints").glob("checkpoint_last*")) \
        == [f"checkpoint_last-expert{r}of{size}.pt" for r in range(size)]
    one = checkpoint(single[workers])
    assert states[0]["model"]["encoder.layers.0.moe.experts.fc1_weight"].size(0) == 4 // size
    for key, value in joined_model(states).items():
        torch.testing.assert_close(value, one["model"][key], **TOLERANCE, msg=key)
    counters = [s["last_optimizer_state"]["omoe"]["counters"] for s in states]
    assert counters[0]["projector_updates"] == 2 and all(c == counters[0] for c in counters)
    log = (parallel[layout] / "log0.txt").read_text()
    assert "omoe_sent_bytes" in log and f"training on {workers} devices" in log


def saved_update(path) -> int:
    """The update a checkpoint file was saved at; -1 while it is missing or being written."""
    try:
        return torch.load(path, weights_only=True)["optimizer_history"][-1]["num_updates"]
    except Exception:  # noqa: BLE001 - not there yet, or not completely written
        return -1


def test_a_killed_run_resumes_exactly(movie_reviews, parallel, tmp_path):
    """SIGKILL to worker 1 once its shard of update 4 is written, then to worker 0 once it has
    written its own (it cannot go on alone), then the same command: the end equals the
    uninterrupted run bit for bit."""
    procs, logs = launch_ranks(movie_reviews[0], tmp_path, ep_args(2), UPDATES, 2,
                               every_rank=False)
    shard = tmp_path / "checkpoints" / "checkpoint_last-expert1of2.pt"
    deadline = time.monotonic() + 600
    while saved_update(shard) < 4 and time.monotonic() < deadline:
        assert procs[1].poll() is None, logs[1].read_text()[-3000:]
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    assert saved_update(shard) == 4, "worker 1 went on past update 4 before it was killed"
    while "@ 4 updates" not in logs[0].read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    resumed = train_data_parallel(movie_reviews[0], tmp_path, ep_args(2), UPDATES, 2,
                                  every_rank=False)
    assert "Loaded checkpoint" in resumed[0] and "(epoch 1 @ 4 updates)" in resumed[0]
    for ours, straight in zip(shards(tmp_path, 2), shards(parallel["2 workers, 2 shards"], 2)):
        for key in straight["model"]:
            assert torch.equal(ours["model"][key], straight["model"][key]), key


def test_shards_of_two_updates_are_refused(movie_reviews, parallel, tmp_path):
    """As a job killed between its workers' writes leaves them: shard 1 of update 12 beside
    shard 0 of update 4."""
    train_data_parallel(movie_reviews[0], tmp_path, ep_args(2), 4, 2, every_rank=False)
    later = parallel["2 workers, 2 shards"] / "checkpoints" / "checkpoint_last-expert1of2.pt"
    (tmp_path / "checkpoints" / later.name).write_bytes(later.read_bytes())
    with pytest.raises(AssertionError, match=r"shards of .* are from different updates \(4 to 12\)"):
        train_data_parallel(movie_reviews[0], tmp_path, ep_args(2), UPDATES + 4, 2,
                            every_rank=False)


def test_consolidated_and_exported_from_a_shard(movie_reviews, single, parallel, tmp_path):
    """omoe-consolidate joins the shards into the one-process checkpoint, and omoe-export
    given a shard writes a model whose outputs are those of the consolidated checkpoint's."""
    shard = parallel["2 workers, 2 shards"] / "checkpoints" / "checkpoint_last-expert0of2.pt"
    whole = tmp_path / "whole.pt"
    assert "wrote" in output(run("omoe-consolidate", str(shard), "--out", str(whole)))
    state = torch.load(whole, weights_only=True)
    assert state["cfg"]["model"]["moe_expert_parallel_size"] == 1
    one = checkpoint(single[2])
    for key, value in state["model"].items():
        torch.testing.assert_close(value, one["model"][key], **TOLERANCE, msg=key)
    texts = (movie_reviews[0] / "raw" / "test.text").read_text(encoding="utf-8").splitlines()[:32]
    probs = []
    for name, source in (("shard", shard), ("whole", whole)):
        output(run("omoe-export", str(source), "--out", str(tmp_path / f"{name}.onnx")))
        predictions = OMoEClassifier(tmp_path / f"{name}.onnx").predict(texts)
        probs.append([p.probabilities for p in predictions])
    assert probs[0] == probs[1]
