"""Compare fine-tuning with AdamW and with OMoE on rated-sentence sentiment data, BoolQ,
CoNLL-2003 NER or Disfl-QA extractive QA: for every configuration and seed, run fairseq-train,
read the best validation score (accuracy; entity F1 for NER; F1 for QA) and the last
validation expert similarity back from the TensorBoard event files, score
checkpoint_best.pt on the test split with fairseq-validate, measure how much lower the
experts' output cosine could be with the same displacements pointed apart ("room for
directions", omoe-analyze --start), and write a markdown table (mean and standard deviation
over seeds).

    python scripts/compare_optimizers.py --setting pretrained [--corpus movie_reviews]
        [--seeds 1 2 3] [--out DIR] [--configs NAME ...] [--report]
        [fairseq-train options added to every run]

Settings:
  pretrained: all-MiniLM-L6-v2 (omoe-import-bert) fine-tuned dense, and upcycled to 4
    experts with `copy` (data-bin/minilm/moe4.pt), `drop` (moe4_drop.pt, Drop-Upcycling)
    and `split` (moe4_split.pt, experts of 576 neurons), fine-tuned with AdamW and with
    OMoE in each of its readings (--omoe-space, --omoe-mode); needs `make compare`'s
    checkpoints. --corpus picks the data: movie_reviews, tweets, amazon,
    movie_review_pairs (pairs of movie reviews: same or different sentiment), boolq,
    conll2003 (NER, --task omoe_token_classification, scored by seqeval's entity F1) or
    disflqa (extractive QA, --task omoe_span_qa, scored by F1 per question); binarised with
    the encoder's vocabulary into data-bin/CORPUS_minilm on first use.
  scratch: a small 4-layer MoE trained from scratch on the movie reviews with AdamW, OMoE
    joint and OMoE average.

--configs picks configurations by their run-directory name (e.g. moe_split_omoe); options
the script does not know go to fairseq-train, so a sweep is one --out per setting:

    python scripts/compare_optimizers.py --configs moe_split_omoe --seeds 1 \
        --out runs/sweep/alpha0.001 --omoe-alpha 0.001

Each run writes OUT/CONFIG/seedN/{train.log,checkpoints,tensorboard,result.json} (OUT:
runs/compare/SETTING/CORPUS by default); a finished run (its result.json exists) is read
back, not run again.
Defaults (phase lengths, alpha) are tuned on the validation column only; test is reported.
"""

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from omoe_plugin.analysis.analyze import expert_similarity
from omoe_plugin.data.cli import BUNDLED, prepare_bundled

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PRE = ROOT / "data-bin" / "minilm"
TASK = ["--user-dir", str(ROOT / "user_dir"), "--max-positions", "128", "--cpu",
        "--num-workers", "0"]
SENTENCES = ["--task", "omoe_sentence_prediction", "--criterion", "omoe_sentence_prediction",
             "--num-classes", "2", "--init-token", "0",
             # a few product-review sentences exceed the 128 positions: cut them, as serving does
             "--shorten-method", "truncate"]
TAGS = ["--task", "omoe_token_classification", "--criterion", "omoe_token_classification"]
SPANS = ["--task", "omoe_span_qa", "--criterion", "omoe_span_qa"]
COMMON = ["--weight-decay", "0.01", "--lr-scheduler", "polynomial_decay", "--batch-size", "32",
          "--maximize-best-checkpoint-metric",
          "--no-epoch-checkpoints", "--no-last-checkpoints", "--log-format", "simple",
          "--log-interval", "100", "--moe-aux-weight", "0.01"]
ADAM = ["--optimizer", "adam", "--adam-betas", "(0.9, 0.98)"]
OMOE = ["--optimizer", "omoe", "--omoe-betas", "(0.9, 0.98)"]
KEEP = ["--omoe-moment", "keep"]  # the readings as first measured: AdamW's moment unprojected
COPY = ["--finetune-from-model", str(PRE / "moe4.pt")]
DROP = ["--finetune-from-model", str(PRE / "moe4_drop.pt")]
SPLIT = ["--finetune-from-model", str(PRE / "moe4_split.pt"), "--moe-expert-ffn-dim", "576"]
SETTINGS = {
    "pretrained": {
        "data": lambda corpus: ROOT / "data-bin" / f"{corpus}_minilm",
        "args": ["--arch", "omoe_roberta_minilm", "--layer-norm-eps", "1e-12", "--moe-experts",
                 "4", "--moe-top-k", "1", "--lr", "1e-4", "--warmup-updates", "20",
                 "--total-num-update", "200", "--max-update", "200"],
        "configs": {
            "dense fine-tune": ["--finetune-from-model", str(PRE / "model.pt"), "--moe-freq", "0",
                                *ADAM],
            "MoE + AdamW": [*COPY, *ADAM],
            "MoE (drop) + AdamW": [*DROP, *ADAM],
            "MoE + OMoE deltas": [*COPY, *OMOE],  # the defaults
            "MoE + OMoE deltas, moment kept": [*COPY, *OMOE, *KEEP],
            "MoE + OMoE inputs joint": [*COPY, *OMOE, *KEEP, "--omoe-space", "inputs"],
            "MoE + OMoE inputs average": [*COPY, *OMOE, *KEEP, "--omoe-space", "inputs",
                                          "--omoe-mode", "average"],
            "MoE + OMoE centred": [*COPY, *OMOE, *KEEP, "--omoe-space", "centred",
                                   "--omoe-stat", "pca"],
            "MoE + OMoE outputs": [*COPY, *OMOE, *KEEP, "--omoe-space", "outputs"],
            "MoE (split) + AdamW": [*SPLIT, *ADAM],
            "MoE (split) + OMoE": [*SPLIT, *OMOE],
        },
    },
    "scratch": {
        "data": lambda corpus: ROOT / "data-bin" / "movie_reviews",
        "args": ["--arch", "omoe_roberta_tiny", "--encoder-layers", "4", "--encoder-embed-dim",
                 "128", "--encoder-ffn-embed-dim", "256", "--moe-experts", "4", "--moe-top-k",
                 "1", "--lr", "5e-4", "--warmup-updates", "60", "--total-num-update", "800",
                 "--max-update", "800", "--max-epoch", "3"],
        "configs": {
            "MoE + AdamW": ADAM,
            "MoE + OMoE (joint)": [*OMOE, *KEEP, "--omoe-space", "inputs", "--omoe-mode", "joint"],
            "MoE + OMoE (average)": [*OMOE, *KEEP, "--omoe-space", "inputs", "--omoe-mode",
                                     "average"],
        },
    },
}


def last_scalars(tb_dir: Path) -> dict[str, list[float]]:
    events = EventAccumulator(str(tb_dir))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def slug(name: str) -> str:
    """A configuration's run-directory name, also its name for --configs."""
    return re.sub(r"\W+", "_", name).strip("_").lower()


def direction_room(run_dir: Path, data: Path, args: list[str]) -> float | None:
    """How much lower the experts' output cosine on the validation split would be with their
    displacements from the start pointed apart, lengths kept (omoe-analyze --start): the
    most any change of update directions could have bought at this run's step lengths.
    None for a dense model."""
    if "--moe-freq" in args and args[args.index("--moe-freq") + 1] == "0":
        return None
    start = Path(args[args.index("--finetune-from-model") + 1])
    layers = expert_similarity(run_dir / "checkpoints" / "checkpoint_best.pt", data, start=start)
    return sum(r["mean_cos"] - r["mean_apart"] for r in layers) / len(layers)


def task_of(corpus: str) -> tuple[list[str], str]:
    """fairseq-train's task options for a corpus, and its validation metric (also the
    checkpoint-selection metric and the one scored on the test split)."""
    if corpus == "conll2003":
        return TASK + TAGS, "entity_f1"
    if corpus == "disflqa":
        return TASK + SPANS, "f1"
    return TASK + SENTENCES, "accuracy"


def run_one(data: Path, out: Path, name: str, args: list[str], seed: int,
            corpus: str) -> dict[str, float]:
    """Train and score one configuration and seed (or read back its finished result)."""
    task, metric = task_of(corpus)
    run_dir = out / slug(name) / f"seed{seed}"
    done = run_dir / "result.json"
    if done.exists():
        result = json.loads(done.read_text())
        if "room" not in result and "--finetune-from-model" in args:  # an older run
            result["room"] = direction_room(run_dir, data, args)
            done.write_text(json.dumps(result))
        return result
    train = [str(BIN / "fairseq-train"), str(data), *task, *COMMON, *args,
             "--best-checkpoint-metric", metric,
             "--seed", str(seed), "--save-dir", str(run_dir / "checkpoints"),
             "--tensorboard-logdir", str(run_dir / "tensorboard")]
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "train.log", "w") as log:
        subprocess.run(train, check=True, stdout=log, stderr=subprocess.STDOUT)
    valid = last_scalars(run_dir / "tensorboard" / "valid")
    test = subprocess.run(
        [str(BIN / "fairseq-validate"), str(data), *task,
         "--path", str(run_dir / "checkpoints" / "checkpoint_best.pt"), "--valid-subset", "test",
         "--omoe-similarity-tokens", "0",
         "--batch-size", "64"], capture_output=True, text=True)
    if test.returncode != 0:
        sys.exit(f"scoring {run_dir} on the test split failed:\n{test.stderr[-3000:]}")
    test_score = float(re.findall(rf"\| {metric} ([\d.]+)", test.stderr + test.stdout)[-1])
    last = lambda tag: valid[tag][-1] if tag in valid else None  # None: a dense model
    result = {"valid": max(valid[metric]), "test": test_score, "cka": last("omoe_sim_cka"),
              "cos": last("omoe_sim_cos"), "delta": last("omoe_sim_delta")}
    if "--finetune-from-model" in args:
        result["room"] = direction_room(run_dir, data, args)
    done.write_text(json.dumps(result))
    return result


def fmt(values: list, digits: int) -> str:
    if None in values:
        return "—"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", choices=list(SETTINGS), default="pretrained")
    parser.add_argument("--corpus", choices=BUNDLED, default="movie_reviews",
                        help="the data set (pretrained setting)")
    parser.add_argument("--out", type=Path, default=None, help="default: runs/compare/SETTING")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--configs", nargs="+", default=None,
                        help="run only these configurations (run-directory names; default: all)")
    parser.add_argument("--report", action="store_true",
                        help="train nothing: tabulate the runs of --seeds that have finished")
    args, extra = parser.parse_known_args()
    setting = SETTINGS[args.setting]
    configs = {slug(name): (name, config) for name, config in setting["configs"].items()}
    unknown = set(args.configs or ()) - set(configs)
    if unknown:
        parser.error(f"unknown --configs {sorted(unknown)}; {args.setting} has {sorted(configs)}")
    if args.setting == "scratch" and args.corpus != "movie_reviews":
        parser.error("the scratch setting trains on the movie reviews only")
    out = args.out or ROOT / "runs" / "compare" / args.setting / args.corpus
    data = setting["data"](args.corpus)
    if not (data / "input0" / "dict.txt").exists():
        srcdict = PRE / "dict.txt" if args.setting == "pretrained" else None
        prepare_bundled(data, args.corpus, srcdict, workers=2)
    score = task_of(args.corpus)[1].replace("accuracy", "acc")
    rows = [f"| configuration | seeds | valid {score} | test {score} | expert CKA | expert "
            "cosine | displacement cosine | room for directions |",
            "|---|---|---|---|---|---|---|---|"]
    for key, (name, config) in configs.items():
        if args.configs is not None and key not in args.configs:
            continue
        run_args = setting["args"] + config + extra
        seeds = [s for s in args.seeds if not args.report
                 or (out / key / f"seed{s}" / "result.json").exists()]
        if not seeds:
            continue
        results = [run_one(data, out, name, run_args, s, args.corpus) for s in seeds]
        cols = {k: [r.get(k) for r in results]
                for k in ("valid", "test", "cka", "cos", "delta", "room")}
        rows.append(f"| {name} | {len(seeds)} | {fmt(cols['valid'], 1)} | {fmt(cols['test'], 1)} | "
                    f"{fmt(cols['cka'], 3)} | {fmt(cols['cos'], 3)} | {fmt(cols['delta'], 3)} | "
                    f"{fmt(cols['room'], 3)} |")
        print(rows[-1], flush=True)
    table = "\n".join(rows) + (f"\n\n{args.setting}, {args.corpus}, seeds {args.seeds}, "
                                f"extra args: {extra}\n")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
