"""A data-parallel worker that captured nothing in an update (fairseq hands it a dummy batch
at the end of an uneven epoch) still takes part in the statistics' reduction: both workers
make the same collective calls and end with the same summaries (2 gloo processes)."""

import datetime

import pytest
import torch
import torch.distributed as dist

from omoe_plugin.moe.capture import RoutedInputCapture

SUMMARIES = ("mean", "pca", "tokens")
STATS = {"0.fc1": torch.zeros(3, 6, 4), "0.fc2": torch.zeros(3, 8, 4)}  # the optimizer's
TOKENS = torch.randn(5, 6, generator=torch.Generator().manual_seed(0))


def worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2, timeout=datetime.timedelta(seconds=30))
    try:
        for summary in SUMMARIES:
            capture = RoutedInputCapture(summary, width=2)
            if rank == 0:  # rank 1 had a dummy batch: no capture call at all
                capture(0, 3, 1, fc1=TOKENS, fc2=torch.ones(5, 8))
            torch.save(capture.take(like=STATS), f"{out_dir}/{summary}{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    from tests.cli import spawn_ranks  # here, not at the top: the workers need not import it

    return spawn_ranks(worker, tmp_path_factory.mktemp("ranks"))


@pytest.mark.parametrize("summary", SUMMARIES)
def test_a_worker_without_tokens_still_reduces(reduced, summary):
    ranks = [torch.load(reduced / f"{summary}{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0].keys() == ranks[1].keys() == STATS.keys()
    for key in STATS:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        assert ranks[0][key][1].any() and not ranks[0][key][0].any()  # expert 1's, reduced
    alone = RoutedInputCapture(summary, width=2)
    alone(0, 3, 1, fc1=TOKENS, fc2=torch.ones(5, 8))
    moment = lambda X: X @ X.transpose(1, 2)
    torch.testing.assert_close(moment(ranks[0]["0.fc1"]), moment(alone.take()["0.fc1"]))
