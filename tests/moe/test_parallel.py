"""Expert parallelism (gloo processes on loopback): a MoE layer whose experts are split over
the ranks, each routing its share of a batch, computes what one process computes on the whole
batch (outputs, expert and router gradients, initial weights, captured inputs); bad splits
are refused."""

import copy
import functools

import pytest
import torch
import torch.distributed as dist

from omoe_plugin.moe import (
    EXPERT_PARALLEL_ATTR,
    ExpertParallel,
    MoEArgs,
    MoELayer,
    expert_parallel_groups,
)

DIM, HIDDEN, BATCH, SEQ = 8, 16, 4, 6  # the batch's rows are split evenly over the ranks
_DATA = torch.Generator().manual_seed(0)
X = torch.randn(BATCH, SEQ, DIM, generator=_DATA)
R = torch.randn(BATCH, SEQ, DIM, generator=_DATA)  # loss = sum(y * R)
# case -> (experts, top-k); "idle": experts 2 and 3 get no token anywhere, "padded rank": the
# last rank's rows are all padding, so it routes no token
CASES = {"E4k1": (4, 1), "E4k2": (4, 2), "E8k1": (8, 1), "E8k2": (8, 2), "idle": (4, 1),
         "padded rank": (4, 2)}
LAYOUTS = {2: (1, 2), 4: (2, 4)}  # world size -> the expert-parallel sizes run
WORLDS = tuple(LAYOUTS)


def mask(case: str, world: int) -> torch.Tensor:
    """Padding: the last b positions of row b, and every row of the last rank in "padded rank"."""
    padding = torch.arange(SEQ) >= SEQ - torch.arange(BATCH).unsqueeze(1)
    if case == "padded rank":
        padding[BATCH - BATCH // world:] = True
    return padding


def build(case: str, parallel=None) -> MoELayer:
    num_experts, top_k = CASES[case]
    torch.manual_seed(0)
    layer = MoELayer(MoEArgs(DIM, HIDDEN, num_experts, top_k, parallel=parallel))
    if case == "idle":  # gate logits (l, -l, 0, 0): expert 0 or 1 wins every token
        with torch.no_grad():
            gate = layer.router.gate.weight
            gate[1], gate[2:] = -gate[0], 0.0
    return layer


def run(layer: MoELayer, rows: slice, padding: torch.Tensor) -> dict:
    """Forward on X[rows], backward of sum(y * R[rows]): outputs, routing, gradients, and
    (local count, local expert, tokens) per capture call."""
    seen = []
    layer.experts.capture = lambda _, E, e, fc1, fc2, outputs: seen.append((E, e, fc1.size(0)))
    y, aux = layer(X[rows], padding[rows])
    (y * R[rows]).sum().backward()
    return dict(y=y.detach(), experts=aux.experts, seen=seen,
                grads={name: p.grad for name, p in layer.named_parameters()})


def refused(make) -> str:
    try:
        make()
    except ValueError as e:
        return str(e)
    raise AssertionError("accepted")


def worker(rank: int, port: int, out_dir: str, world: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        results = {"errors": [refused(lambda: expert_parallel_groups(s)) for s in (0, 3)]}
        rows = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        for size in LAYOUTS[world]:
            parallel = expert_parallel_groups(size)
            for case in CASES:
                layer = build(case, parallel)
                out = run(layer, rows, mask(case, world))
                for name, grad in out["grads"].items():  # as data parallelism would reduce them
                    if name.startswith("router."):
                        dist.all_reduce(grad)
                    elif dist.get_world_size(parallel.replicas) > 1:
                        dist.all_reduce(grad, group=parallel.replicas)
                out["weights"] = {n: p.detach() for n, p in layer.experts.named_parameters()}
                out["local"] = (layer.experts.first_expert, layer.experts.num_local_experts)
                results[size, case] = out
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module", params=WORLDS)
def ranks(request, tmp_path_factory) -> tuple[int, list[dict]]:
    """(world size, every rank's results)."""
    from tests.cli import spawn_ranks  # here, not at the top: the workers need not import it

    world = request.param
    out = spawn_ranks(functools.partial(worker, world=world),
                      tmp_path_factory.mktemp(f"world{world}"), world_size=world)
    return world, [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(world)]


@pytest.mark.parametrize("case", CASES)
def test_split_experts_compute_what_one_process_computes(ranks, case):
    world, results = ranks
    single_layer = build(case)
    single = run(single_layer, slice(None), mask(case, world))
    if case == "idle":
        assert not torch.isin(single["experts"], torch.tensor([2, 3])).any()
    for size in LAYOUTS[world]:
        parts = [r[size, case] for r in results]
        y = torch.cat([part["y"] for part in parts])
        torch.testing.assert_close(y, single["y"], atol=1e-6, rtol=1e-6)
        if case == "padded rank":
            assert not parts[-1]["y"].any()
        for part in parts:
            first, count = part["local"]
            assert count == CASES[case][0] // size
            local = slice(first, first + count)
            for name, grad in part["grads"].items():
                expected = single["grads"][name]
                if name.startswith("experts."):
                    expected = expected[local]
                    single_weight = single_layer.get_parameter(name).detach()[local]
                    assert torch.equal(part["weights"][name.split(".")[1]], single_weight)
                torch.testing.assert_close(grad, expected, atol=1e-6, rtol=1e-6, msg=name)


@pytest.mark.parametrize("case", ("E4k2", "idle", "padded rank"))
def test_capture_sees_local_experts_and_every_token_routed_to_them(ranks, case):
    world, results = ranks
    routed = run(build(case), slice(None), mask(case, world))["experts"]  # [B, T, k]
    for size in LAYOUTS[world]:
        for rank, result in enumerate(results):
            part = result[size, case]
            first, count = part["local"]
            group = rank // size * size  # the group's first rank: its rows were routed
            rows = routed[group * BATCH // world:(group + size) * BATCH // world]
            tokens = [int((rows == first + e).sum()) for e in range(count)]
            assert part["seen"] == [(count, e, n) for e, n in enumerate(tokens)]
        if case == "idle":  # experts 2 and 3 ran, on no token
            seen = [(r[size, case]["local"][0] + e, n) for r in results
                    for _, e, n in r[size, case]["seen"]]
            assert {n for e, n in seen if e >= 2} == {0}


def test_bad_group_sizes_are_refused(ranks):
    world, results = ranks
    too_small, uneven = results[0]["errors"]
    assert too_small == "--moe-expert-parallel-size must be >= 1, got 0"
    assert uneven == (f"the world size ({world}) must be a multiple of "
                      "--moe-expert-parallel-size (3)")


def test_experts_must_split_evenly():
    with pytest.raises(ValueError, match=r"--moe-experts \(6\) .*-parallel-size \(4\)"):
        MoELayer(MoEArgs(DIM, HIDDEN, num_experts=6, parallel=ExpertParallel(None, 4, 0, None)))


def test_local_experts_are_the_single_process_slice_and_tagged():
    parallel = ExpertParallel(None, 2, 1, None)  # no communication before the forward
    single, split = build("E4k2").experts, build("E4k2", parallel).experts
    assert (split.num_experts, split.num_local_experts, split.first_expert) == (4, 2, 2)
    fc1, fc2 = torch.nn.Linear(DIM, 4 * HIDDEN), torch.nn.Linear(4 * HIDDEN, DIM)
    neurons = torch.randperm(4 * HIDDEN).view(4, HIDDEN)  # [E, h_e]: a share of the neurons
    for experts in (single, split):
        experts.copy_dense_(fc1, fc2, neurons)
    for name, p in split.named_parameters():
        assert torch.equal(p, single.get_parameter(name)[2:])
        assert getattr(p, EXPERT_PARALLEL_ATTR) is parallel and p.expert is True
        assert not hasattr(single.get_parameter(name), "expert")
        assert getattr(single.get_parameter(name), EXPERT_PARALLEL_ATTR) is None
    assert copy.deepcopy(split).parallel is parallel
