"""OMoE under expert parallelism (2 and 4 gloo processes on loopback, each holding E/N experts
of every stacked weight): two cycles of accumulating and orthogonal updates give every worker
the single-process result for its experts, in every reading, and the bytes each worker sends
follow the formula of docs/expert-parallel.md."""

from functools import partial

import pytest
import torch
import torch.distributed as dist

from omoe_plugin.optim import OMoE

E, D, H = 8, 6, 10  # experts, model and hidden width
CYCLE = dict(accumulate_steps=2, orthogonal_steps=2)
STEPS = 8  # two cycles
READINGS = {
    "deltas": {},
    "deltas, average, max gain, gradient": dict(mode="average", max_gain=2.0, project="gradient"),
    "deltas, moment kept, max gain": dict(moment="keep", max_gain=1.5),
    "inputs": dict(space="inputs", stat="pca", stat_rank=2, max_rank=4),
    "inputs, average": dict(space="inputs", mode="average", stat="tokens", max_rank=3),
    "outputs": dict(space="outputs", stat="mean", max_rank=2),
}


def weights() -> list[torch.Tensor]:
    """The stacked expert weights [E, out, in] and a shared parameter, as one process has them."""
    g = torch.Generator().manual_seed(0)
    return [torch.randn(E, H, D, generator=g), torch.randn(E, D, H, generator=g),
            torch.randn(D, generator=g)]


def gradients(step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(E, H, D, generator=g), torch.randn(E, D, H, generator=g),
            torch.randn(D, generator=g)]


def summaries(stats: dict[str, torch.Tensor], step: int, experts: slice) -> dict:
    """Routed-input summaries of every expert (the same on every worker), this share of them."""
    g = torch.Generator().manual_seed(200 + step)
    return {k: torch.randn(E, v.size(1), 2, generator=g)[experts] for k, v in stats.items()}


def train(reading: dict, rank: int = 0, workers: int = 1) -> tuple[list[torch.Tensor], list, dict]:
    """STEPS updates of OMoE on this worker's share of the experts; its parameters, the
    bytes it sent at each step and its last measurements (trace, removed share)."""
    share = slice(rank * E // workers, (rank + 1) * E // workers)
    params = [torch.nn.Parameter(w[share] if w.dim() == 3 else w) for w in weights()]
    optimizer = OMoE(params, lr=0.05, experts=[params[:2]],
                     expert_group=dist.group.WORLD if workers > 1 else None, **{**CYCLE, **reading})
    sent = []
    for step in range(STEPS):
        for p, grad in zip(params, gradients(step)):
            p.grad = grad[share] if grad.dim() == 3 else grad
        optimizer.routed_inputs = partial(summaries, step=step, experts=share)
        optimizer.step()
        sent.append(optimizer.report.get("sent_bytes", 0.0))
    return [p.detach() for p in params], sent, optimizer.last_measured


def worker(rank: int, port: int, out_dir: str, workers: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=workers)
    try:
        torch.save({name: train(reading, rank, workers) for name, reading in READINGS.items()},
                   f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module", params=[2, 4])
def sharded(request, tmp_path_factory):
    from tests.cli import spawn_ranks  # here, not at the top: the workers need not import it

    workers = request.param
    out = spawn_ranks(partial(worker, workers=workers), tmp_path_factory.mktemp("ranks"), workers)
    return workers, [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(workers)]


@pytest.mark.parametrize("name", READINGS)
def test_every_worker_ends_with_the_single_process_experts(sharded, name):
    workers, ranks = sharded
    single, _, measured = train(READINGS[name])
    for rank, results in enumerate(ranks):
        params, _, measured_here = results[name]
        assert measured_here.keys() == measured.keys()
        for key, value in measured.items():  # every expert's, not this worker's
            assert measured_here[key] == pytest.approx(value, rel=1e-5), key
        share = slice(rank * E // workers, (rank + 1) * E // workers)
        torch.testing.assert_close(params[0], single[0][share], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(params[1], single[1][share], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(params[2], single[2], atol=1e-6, rtol=1e-6)
    assert not torch.equal(single[0], train(dict(READINGS[name], accumulate_steps=STEPS))[0][0])


def test_bytes_sent_per_orthogonal_update_follow_the_formula(sharded):
    """deltas, one orthogonal update of weights of D H entries per expert: six transpositions
    of a worker's share (moments, the weight before and after the step, what is removed from
    it, the moment and what is removed from it), each sending (N-1)/N of it, and four [E, E]
    all-reduces (the Gram matrix and three products), of 2 (N-1)/N E^2 floats each."""
    workers, ranks = sharded
    spread = (workers - 1) / workers
    per_weight = 6 * spread * (E // workers) * D * H + 4 * 2 * spread * E * E
    for results in ranks:
        _, sent, _ = results["deltas"]
        assert sent[:2] == [0.0, 0.0] and sent[4:6] == [0.0, 0.0]  # accumulating: nothing
        assert sent[3] == pytest.approx(2 * 4 * per_weight)  # two weights, float32
        # a cycle's first orthogonal update also measures the removed share: one norm each
        assert sent[2] == pytest.approx(sent[3] + 2 * 4 * 2 * spread)
    # statistics readings: the statistics all-gathered once per cycle, when formed, and the
    # measurement's two norms per weight (the update's and what is removed from it)
    _, sent, _ = ranks[0]["outputs"]
    stats = (E // workers) * (H + D) * 2  # [E/N, dim, max_rank] for each weight
    assert sent[2] == pytest.approx(4 * (workers - 1) * stats + 2 * 2 * 4 * 2 * spread)
    assert sent[3] == 0.0
