"""Routed-input summaries are summed over data-parallel workers (2 gloo processes on
loopback): every rank ends with the same statistics, equal to one process seeing all data."""

import pytest
import torch
import torch.distributed as dist

from omoe_plugin.optim.capture import RoutedInputCapture

DATA = torch.randn(2, 10, 6, generator=torch.Generator().manual_seed(0))  # one half per rank


def capture(summary: str, parts: list[torch.Tensor]) -> RoutedInputCapture:
    cap = RoutedInputCapture(summary, width=3)
    for x in parts:
        cap(0, 3, 0, fc1=x)
        cap(0, 3, 2, fc1=x[:3])  # expert 1 sees nothing anywhere
    return cap


SUMMARIES = ("mean", "pca", "tokens")


def worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        for summary in SUMMARIES:
            torch.save(capture(summary, [DATA[rank]]).pop_summaries(), f"{out_dir}/{summary}{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def gathered(tmp_path_factory):
    from tests.cli import spawn_ranks  # here, not at the top: the workers need not import it

    return spawn_ranks(worker, tmp_path_factory.mktemp("ranks"))


@pytest.mark.parametrize("summary", SUMMARIES)
def test_every_rank_gets_the_same_all_reduced_statistics(gathered, summary):
    ranks = [torch.load(gathered / f"{summary}{r}.pt", weights_only=True)["0.fc1"] for r in range(2)]
    assert torch.equal(ranks[0], ranks[1])
    assert not ranks[0][1].any()
    if summary != "pca":  # pca keeps each rank's top directions, not the union's
        single = capture(summary, [DATA[0], DATA[1]]).pop_summaries()["0.fc1"]
        moment = lambda X: X @ X.transpose(1, 2)
        torch.testing.assert_close(moment(ranks[0]), moment(single), atol=1e-6, rtol=1e-5)
