"""Compare MoE fine-tuning with AdamW and with OMoE (joint / average projector) on the
movie-review data: for every configuration and seed, run fairseq-train, read the best
validation accuracy and the last validation expert similarity back from the TensorBoard
event files, score checkpoint_best.pt on the test split with fairseq-validate, and write a
markdown table (mean and standard deviation over seeds).

    python scripts/compare_optimizers.py [--seeds 1 2] [--out runs/compare] [-- EXTRA TRAIN ARGS]

Defaults (phase lengths, alpha) are tuned on the validation column only; test is reported.
"""

import argparse
import re
import statistics
import subprocess
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TASK = ["--user-dir", str(ROOT / "user_dir"), "--task", "omoe_sentence_prediction",
        "--num-classes", "2", "--init-token", "0", "--max-positions", "128", "--cpu",
        "--num-workers", "0"]
MODEL = ["--arch", "omoe_roberta_tiny", "--encoder-layers", "4", "--encoder-embed-dim", "128",
         "--encoder-ffn-embed-dim", "256", "--moe-experts", "4", "--moe-top-k", "1",
         "--criterion", "omoe_sentence_prediction", "--moe-aux-weight", "0.01"]
SCHEDULE = ["--lr", "5e-4", "--weight-decay", "0.01", "--lr-scheduler", "polynomial_decay",
            "--warmup-updates", "60", "--total-num-update", "800", "--max-update", "800",
            "--max-epoch", "3", "--batch-size", "32", "--best-checkpoint-metric", "accuracy",
            "--maximize-best-checkpoint-metric", "--no-epoch-checkpoints", "--no-last-checkpoints",
            "--log-format", "simple", "--log-interval", "100"]
CONFIGS = {
    "MoE + AdamW": ["--optimizer", "adam", "--adam-betas", "(0.9, 0.98)"],
    "MoE + OMoE (joint)": ["--optimizer", "omoe", "--omoe-betas", "(0.9, 0.98)",
                           "--omoe-mode", "joint"],
    "MoE + OMoE (average)": ["--optimizer", "omoe", "--omoe-betas", "(0.9, 0.98)",
                             "--omoe-mode", "average"],
}


def last_scalars(tb_dir: Path) -> dict[str, list[float]]:
    events = EventAccumulator(str(tb_dir))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def run_one(data: Path, out: Path, name: str, args: list[str], seed: int) -> dict[str, float]:
    run_dir = out / re.sub(r"\W+", "_", name).strip("_").lower() / f"seed{seed}"
    train = [str(BIN / "fairseq-train"), str(data), *TASK, *MODEL, *SCHEDULE, *args,
             "--seed", str(seed), "--save-dir", str(run_dir / "checkpoints"),
             "--tensorboard-logdir", str(run_dir / "tensorboard")]
    subprocess.run(train, check=True, capture_output=True, text=True)
    valid = last_scalars(run_dir / "tensorboard" / "valid")
    test = subprocess.run(
        [str(BIN / "fairseq-validate"), str(data), *TASK, "--criterion", "omoe_sentence_prediction",
         "--path", str(run_dir / "checkpoints" / "checkpoint_best.pt"), "--valid-subset", "test",
         "--batch-size", "64"], check=True, capture_output=True, text=True)
    test_acc = float(re.findall(r"\| accuracy ([\d.]+)", test.stderr + test.stdout)[-1])
    return {"valid": max(valid["accuracy"]), "test": test_acc,
            "cka": valid["omoe_sim_cka"][-1], "cos": valid["omoe_sim_cos"][-1]}


def fmt(values: list[float], digits: int) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data-bin" / "movie_reviews")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "compare")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args, extra = parser.parse_known_args()
    rows = ["| configuration | valid acc | test acc | expert CKA | expert cosine |",
            "|---|---|---|---|---|"]
    for name in args.configs:
        results = [run_one(args.data, args.out, name, CONFIGS[name] + extra, s) for s in args.seeds]
        cols = {k: [r[k] for r in results] for k in results[0]}
        rows.append(f"| {name} | {fmt(cols['valid'], 1)} | {fmt(cols['test'], 1)} | "
                    f"{fmt(cols['cka'], 3)} | {fmt(cols['cos'], 3)} |")
        print(rows[-1], flush=True)
    table = "\n".join(rows) + f"\n\n{len(args.seeds)} seeds; extra args: {' '.join(extra)}\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
