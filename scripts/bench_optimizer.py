"""Benchmark: wall time per update of `--optimizer omoe` against `--optimizer adam` on the same
MoE model and the same real batches, plus the OMoE state's memory against the parameters'.
fairseq's `adam` steps with its own per-tensor loop and OMoE with torch's fused AdamW kernel,
so the orthogonal phase's own cost is also reported against OMoE's accumulating updates.

One update = the task's train_step (forward + backward, with routed-input capture in
accumulating updates) + optimizer_step, exactly as fairseq-train runs them. The two
optimizers drive two identical copies of the model, interleaved update by update so that
machine-load drift hits both alike; medians per phase over several cycles. The last line is
one JSON object.

    python scripts/bench_optimizer.py [--arch omoe_roberta_minilm] [--cycles 3] [OMoE options]
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from fairseq import optim, options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from omegaconf import OmegaConf

from omoe_plugin.data.movie_reviews import prepare
from omoe_plugin.tasks.schedule import find_omoe

ROOT = Path(__file__).resolve().parents[1]


def fairseq_cfg(data: Path, arch: str, extra: list[str]):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        str(data), "--user-dir", str(ROOT / "user_dir"), "--task", "omoe_sentence_prediction",
        "--num-classes", "2", "--init-token", "0", "--max-positions", "128", "--cpu",
        "--arch", arch, "--moe-experts", "4", "--moe-top-k", "1", "--dropout", "0.1",
        "--criterion", "omoe_sentence_prediction", "--batch-size", "32", "--lr", "1e-4",
        "--omoe-similarity-tokens", "0", *extra,
    ])
    return convert_namespace_to_omegaconf(args)


def state_bytes(omoe) -> tuple[int, int]:
    """(projector factor bytes, statistics bytes) held by the OMoE optimizer."""
    factors = sum(t.numel() * t.element_size() for t in omoe.factors.values())
    stats = sum(t.numel() * t.element_size() for t in omoe.stats.values())
    return factors, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="omoe_roberta_minilm")
    parser.add_argument("--data", type=Path, default=ROOT / "data-bin" / "movie_reviews")
    parser.add_argument("--cycles", type=int, default=3)
    args, omoe_args = parser.parse_known_args()
    if not (args.data / "input0" / "dict.txt").exists():
        prepare(args.data, workers=2)

    cfg = fairseq_cfg(args.data, args.arch, ["--optimizer", "omoe", *omoe_args])
    adam_cfg = fairseq_cfg(args.data, args.arch, ["--optimizer", "adam"])
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    criterion = task.build_criterion(cfg.criterion)
    torch.manual_seed(0)
    models = {"omoe": task.build_model(cfg.model), "adam": task.build_model(adam_cfg.model)}
    models["adam"].load_state_dict(models["omoe"].state_dict())
    optimizers = {
        name: optim.build_optimizer(c.optimizer, [p for p in models[name].parameters()])
        for name, c in (("omoe", cfg), ("adam", adam_cfg))
    }
    omoe = find_omoe(optimizers["omoe"])
    settings = omoe.settings
    cycle = settings.accumulate_steps + settings.orthogonal_steps
    batches = task.get_batch_iterator(
        task.dataset("train"), max_sentences=32, seed=1
    ).next_epoch_itr(shuffle=True)

    def update(name: str, sample, update_num: int) -> float:
        model, optimizer = models[name], optimizers[name]
        start = time.perf_counter()
        optimizer.zero_grad()
        task.train_step(sample, model, criterion, optimizer, update_num)
        task.optimizer_step(optimizer, model, update_num)
        return time.perf_counter() - start

    times = {"adam": [], "accumulate": [], "switch": [], "orthogonal": []}
    for update_num in range((args.cycles + 1) * cycle):  # the first cycle warms up
        sample = next(batches)
        phase = omoe.next_phase
        omoe_s, adam_s = update("omoe", sample, update_num), update("adam", sample, update_num)
        if update_num < cycle:
            continue
        kind = ("accumulate" if phase.accumulating
                else "switch" if phase.position == settings.accumulate_steps else "orthogonal")
        times[kind].append(omoe_s)
        times["adam"].append(adam_s)

    med = {k: statistics.median(v) for k, v in times.items()}
    cycle_s = (settings.accumulate_steps * med["accumulate"] + med["switch"]
               + (settings.orthogonal_steps - 1) * med["orthogonal"]) / cycle
    params = sum(p.numel() * p.element_size() for p in models["omoe"].parameters())
    factor_b, stat_b = state_bytes(omoe)
    result = {
        "arch": args.arch,
        "omoe": {k: v for k, v in OmegaConf.to_container(cfg.optimizer).items()
                 if k.startswith("omoe_") and k != "omoe_betas"},
        "adam_ms": round(med["adam"] * 1e3, 1),
        "accumulate_ms": round(med["accumulate"] * 1e3, 1),
        "switch_ms": round(med["switch"] * 1e3, 1),
        "orthogonal_ms": round(med["orthogonal"] * 1e3, 1),
        "accumulate_overhead": round(med["accumulate"] / med["adam"] - 1, 3),
        "orthogonal_overhead": round(med["orthogonal"] / med["adam"] - 1, 3),
        "cycle_overhead": round(cycle_s / med["adam"] - 1, 3),
        # the orthogonal phase's own cost: against OMoE's accumulating updates, whose AdamW
        # kernel (torch's fused one) is the same in both phases
        "orthogonal_cycle_cost": round(cycle_s / med["accumulate"] - 1, 3),
        "param_mb": round(params / 2**20, 1),
        "projector_mb": round(factor_b / 2**20, 2),
        "statistics_mb": round(stat_b / 2**20, 2),
        "projector_memory_ratio": round(factor_b / params, 4),
        "omoe_state_memory_ratio": round((factor_b + stat_b) / params, 4),
        "targets": {"cycle_overhead": 0.10, "projector_memory_ratio": 0.10},
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.cycles} cycles "
          f"of {cycle} updates after one warm-up cycle, batch 32 real sentences")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
