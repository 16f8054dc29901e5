"""End to end, data-parallel: fairseq-train --optimizer omoe as 2 gloo processes on the CPU,
launched as the README says. Every rank ends with bit-identical parameters, statistics and
projectors, and the run matches one process with the same global batch (--update-freq 2:
the same two batches per update) within float32 reduction-order noise."""

import pytest
import torch

from tests.cli import checkpoint, train, train_data_parallel
from tests.test_cli_reliability import OMOE

pytestmark = pytest.mark.slow

# dropout off: the ranks' and the micro-batches' dropout masks differ by construction
ARGS = [*OMOE, "--dropout", "0", "--attention-dropout", "0"]
UPDATES = 12
TOLERANCE = dict(atol=1e-5, rtol=1e-4)  # float32 sums taken in another order, 12 AdamW steps


@pytest.fixture(scope="module")
def runs(movie_reviews, tmp_path_factory):
    data = movie_reviews[0]
    parallel, single = tmp_path_factory.mktemp("parallel"), tmp_path_factory.mktemp("single")
    logs = train_data_parallel(data, parallel, ARGS, UPDATES)
    train(data, single, [*ARGS, "--update-freq", "2"], UPDATES)
    ranks = [checkpoint(parallel / f"rank{r}") for r in range(2)]
    return logs, ranks, checkpoint(single)


def omoe_state(state: dict) -> dict:
    return state["last_optimizer_state"]["omoe"]


def moments(stacked: torch.Tensor) -> torch.Tensor:
    """X X^T per expert: what statistics and projector factors mean, free of the sign and
    rotation of their columns (an eigenvector's sign is not defined)."""
    return stacked.double() @ stacked.double().transpose(1, 2)


def test_two_ranks_trained_together(runs):
    logs, ranks, _ = runs
    assert "distributed init (rank 1)" in logs[1] and "training on 2 devices" in logs[0]
    assert all(r["optimizer_history"][-1]["num_updates"] == UPDATES for r in ranks)


def test_every_rank_holds_the_same_parameters_statistics_and_projectors(runs):
    _, (a, b), _ = runs
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    sa, sb = omoe_state(a), omoe_state(b)
    assert sa["counters"] == sb["counters"] and sa["counters"]["projector_updates"] == 2
    for part in ("stats", "stat_steps", "factors"):
        assert sa[part].keys() == sb[part].keys() and sa[part]
        for key in sa[part]:
            assert torch.equal(sa[part][key], sb[part][key]), (part, key)


def test_data_parallel_matches_one_process_with_the_same_global_batch(runs):
    _, (parallel, _), single = runs
    for key in single["model"]:
        torch.testing.assert_close(parallel["model"][key], single["model"][key], **TOLERANCE,
                                   msg=key)
    sp, ss = omoe_state(parallel), omoe_state(single)
    assert sp["counters"] == ss["counters"]
    assert torch.equal(sp["stat_steps"]["0.fc1"], ss["stat_steps"]["0.fc1"])
    for part in ("stats", "factors"):
        for key in ss[part]:
            torch.testing.assert_close(moments(sp[part][key]), moments(ss[part][key]),
                                       **TOLERANCE, msg=f"{part} {key}")
