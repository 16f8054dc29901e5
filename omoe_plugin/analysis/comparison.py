"""The converged comparison: what it trains and in which order, run by
scripts/compare_optimizers.py (its usage there). Each configuration (CONFIGS) is trained to
convergence at its own best learning rate, and every finished run is kept as a record.

Protocol (TASKS, fixed per corpus before comparing): train until validation has not improved
for P validations (--patience), at most N epochs (--max-epoch), validating and saving a
checkpoint every ceil(updates per epoch / 4) updates and at the end of epoch N; learning rate
polynomially decayed to 0 over the N-epoch cap, with 6 % of it warm-up.

--select trains each configuration at seed 1 over the learning-rate grid and scores
validation only; the variants, baselines and control (RATE_FROM) train at the one rate their base
configuration chose instead, once the base's selection is complete. The final mode trains
each configuration at the rate its selection runs scored best on validation, for every seed
(ONE_SEED, Drop-Upcycling and the control: the first seed only; the variants: only the best
of them, chosen from the selection runs), and scores its checkpoint_best.pt once on the test
split (seed 1 reuses its selection run, or trains it again with the same options where that
run's checkpoint is not on this machine); it refuses a configuration whose selection is
incomplete. Every finished run appends one record to results/convergence.jsonl, its
validation curve included (a run with a record is not run again). An early run (before LAST's
runs, --all's last) trains a final run of seed 1 whose record has no curve (records written
before they held one) again for its first EARLY_EPOCHS[-1] epochs, to the first validation
after them, under the same schedule: its curve is that final row's in the report's
early-learning table.
--report writes docs/results/convergence.md from the records. --all works through every
corpus's selection and final runs in the order the comparison needs them (all_steps: AdamW
and OMoE on every corpus first, then the variants), each run once however many processes
share the work, and waits while what is left is held by another process or waits for its
selection.

A killed run continues from its checkpoint_last.pt when the same command is run again (fairseq
then ignores --finetune-from-model; early stopping's count is restored too:
omoe_plugin.analysis.patience), its training wall time summed over the segments
(RUN/run.json), and ends as the uninterrupted run would have. Runs take a lock: the same
command started twice works through the runs two at a time. Each run trains in
OUT/CONFIG/lr{LR}_seed{SEED}_{OPTIONS DIGEST} (OUT: runs/convergence/SETTING/CORPUS), with
OMP_NUM_THREADS=1 unless set; only checkpoint_best.pt, without its optimizer state, is kept
once it is recorded.

Settings: pretrained (all-MiniLM-L6-v2, dense or upcycled: `make data-bin/minilm/moe4.pt`...;
data binarised into data-bin/CORPUS_minilm on first use); scratch (a small 4-layer model).

Every function takes the comparison's arguments as `c` (an argparse.Namespace of the script),
with `c.root` the repository the runs train in (fairseq runs there; paths in the options and
records are relative to it).
"""

import argparse
import fcntl
import hashlib
import json
import math
import re
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from . import runs
from .results import (
    EARLY_EPOCHS, Protocol, SelectionIncomplete, append_record, best_variant, chosen_lr, find,
    load_records, record_key, selection_grid, slug)
from .runs import option

# Patience P (validations without improvement) and cap N (epochs) per corpus, fixed once
# before comparing; a new corpus is one more line. N: a MiniLM run of the cap takes at most
# about 1.5 h on a 2-core AMD EPYC, single-threaded, two runs at a time. Measured in CPU
# seconds, two runs side by side: fairseq-train of 10 and 50 updates without validation (the
# difference / 40: an update), and of 10 with one validation and its checkpoints (the extra:
# a validation). Dense is the slowest configuration here:
#   movie_reviews, s an update: dense 1.62-1.65, MoE + AdamW 1.46, MoE + OMoE 1.39-1.40; a
#     validation 14-17 s + 2-8 s writing checkpoints. Dense: 265 updates x 1.65 s + 4 x 19 s
#     = 513 s an epoch, N = 10: 86 min (MoE: 77-78 min);
#   conll2003: dense 1.60-1.72, MoE + AdamW 1.36, MoE + OMoE 1.22-1.26; a validation (3,253
#     sentences) 36-55 s + 1-4 s. Dense: 439 x 1.65 s + 4 x 56 s = 948 s an epoch, N = 5:
#     79 min (6 would be 95; MoE: 59-65 min).
# P = 8 (two epochs without improvement): one validation's score moves by a few tenths from
# the next, so fewer would stop on noise; the decaying rate makes late gains small.
TASKS = {
    "movie_reviews": Protocol(patience=8, max_epoch=10),
    "conll2003": Protocol(patience=8, max_epoch=5),
    # PrivacyQA: 264 updates an epoch of pairs twice a movie-review sentence's length (median
    # 39 sub-words); estimated at twice its cost: 264 x 3.3 s + 4 x 30 s an epoch, N 6: 100 min.
    # Its batches are grouped by length (random batches are about half padding): MoE + OMoE
    # 2.1-2.2 s an update against 3.6 (30 updates after 3, twice each, beside two runs); a run
    # of the cap, MoE + AdamW beside another run, took 49 min. The first two corpora keep
    # fairseq's random batches, the protocol their runs began with.
    "privacy_qa": Protocol(patience=8, max_epoch=6, group_by_length=True),
}
TASK = ["--user-dir", "user_dir", "--max-positions", "128", "--cpu", "--num-workers", "0"]
SENTENCES = ["--task", "omoe_sentence_prediction", "--criterion", "omoe_sentence_prediction",
             "--num-classes", "2", "--init-token", "0", "--shorten-method", "truncate"]
TAGS = ["--task", "omoe_token_classification", "--criterion", "omoe_token_classification"]
SPANS = ["--task", "omoe_span_qa", "--criterion", "omoe_span_qa"]
# expert similarity is measured once, on checkpoint_best.pt: not at every validation
COMMON = ["--weight-decay", "0.01", "--lr-scheduler", "polynomial_decay", "--batch-size", "32",
          "--maximize-best-checkpoint-metric", "--no-epoch-checkpoints", "--log-format",
          "simple", "--log-interval", "100", "--moe-aux-weight", "0.01",
          "--omoe-similarity-tokens", "0"]
ADAM = ["--optimizer", "adam", "--adam-betas", "(0.9, 0.98)"]
OMOE = ["--optimizer", "omoe", "--omoe-betas", "(0.9, 0.98)"]
LR_GRID = [3e-5, 1e-4, 3e-4]
TOP2 = ["--moe-experts", "8", "--moe-top-k", "2"]
CONFIGS = {  # name: (the setting's start it trains from, its fairseq options): one line each
    "dense fine-tune": ("dense", ADAM),
    "MoE + AdamW": ("moe", ADAM),
    "MoE + OMoE": ("moe", OMOE),  # the defaults
    # variants for OMoE's diversity without its early cost: AdamW through about the warm-up,
    # a projection whose strength rises over the first 1,000 updates, or projected expert
    # updates twice as long (the projection removes about a third of each; at 200 updates
    # this moved the experts furthest apart); then the baselines
    "MoE + OMoE, delayed start": ("moe", [*OMOE, "--omoe-start", "200"]),
    "MoE + OMoE, strength ramp": ("moe", [*OMOE, "--omoe-strength-ramp", "1000"]),
    "MoE + OMoE, longer orthogonal steps": ("moe", [*OMOE, "--omoe-orthogonal-lr-scale", "2"]),
    # the control of the longer steps (the best variant): the same step lengths with nothing
    # projected (--omoe-alpha 1e9 leaves AdamW's updates and moments as they are), so whether
    # the projection, not the longer steps, moves the experts apart
    "MoE + OMoE, longer orthogonal steps, nothing projected": (
        "moe", [*OMOE, "--omoe-orthogonal-lr-scale", "2", "--omoe-alpha", "1e9"]),
    "MoE (drop 0.1) + AdamW": ("drop01", ADAM),
    "MoE + AdamW + orthogonality loss": ("moe", [*ADAM, "--moe-orthogonality-weight", "0.1"]),
    # the scale point: 8 experts, top-2 (these override the setting's 4 experts, top-1)
    "MoE 8x top-2 + AdamW": ("moe8", [*ADAM, *TOP2]),
    "MoE 8x top-2 + OMoE": ("moe8", [*OMOE, *TOP2]),
}
# The configurations that do not search the grid: each trains at the rate its base chose, so
# its selection is one run (seed 1, at that rate) once the base's is complete. A search costs
# three runs of about an hour here; it is spent on the rows the comparison is about (dense,
# AdamW, OMoE), and the variants and baselines are compared with their base at equal rate.
RATE_FROM = {
    "MoE + OMoE, delayed start": "MoE + OMoE",
    "MoE + OMoE, strength ramp": "MoE + OMoE",
    "MoE + OMoE, longer orthogonal steps": "MoE + OMoE",
    "MoE + OMoE, longer orthogonal steps, nothing projected": "MoE + OMoE",
    "MoE (drop 0.1) + AdamW": "MoE + AdamW",
    "MoE + AdamW + orthogonality loss": "MoE + AdamW",
    "MoE 8x top-2 + AdamW": "MoE + AdamW",
    "MoE 8x top-2 + OMoE": "MoE + OMoE",
}
# The scale point is measured on one task: the others leave it out unless --configs names it.
SCALE_POINT, SCALE_TASK = ["MoE 8x top-2 + AdamW", "MoE 8x top-2 + OMoE"], "movie_reviews"
# The final runs: the variants' best one only (results.best_variant, from the selection runs
# of every corpus: one variant for all, the candidate for a new default) at every seed, and
# ONE_SEED (Drop-Upcycling and the control) at the first seed (their selection run, scored on
# test); the report holds OMoE's default and the variants to the bar (results.BAR_SEEDS...)
# against AdamW, and shows there the verdict of any baseline with every seed.
VARIANTS = ["MoE + OMoE, delayed start", "MoE + OMoE, strength ramp",
            "MoE + OMoE, longer orthogonal steps"]
BASELINES = ["MoE (drop 0.1) + AdamW", "MoE + AdamW + orthogonality loss"]
# each control: the configuration it controls (the report compares how far their experts end apart)
CONTROLS = {"MoE + OMoE, longer orthogonal steps, nothing projected":
            "MoE + OMoE, longer orthogonal steps"}
# A baseline that has every seed nonetheless, last (all_steps), after everything the bar
# needs: at its first seed the orthogonality loss moved the experts far further apart than
# any OMoE setting on every task, its accuracy within about a point of AdamW's, so its other
# seeds decide which setting a user after experts apart should pick.
LAST = ["MoE + AdamW + orthogonality loss"]
ONE_SEED = [name for name in [*BASELINES, *CONTROLS] if name not in LAST]
CANDIDATES = ["MoE + OMoE", *VARIANTS]
# the scale point's OMoE is held to the same bar against its own AdamW, on its task
SCALE_BAR = {"MoE 8x top-2 + AdamW": ["MoE 8x top-2 + OMoE"]}
CORE = ["MoE + AdamW", "MoE + OMoE"]  # --all trains these first, on every corpus
WAIT_S = 60  # --all: how often a process with nothing to train looks again
SETTINGS = {
    "pretrained": {
        "data": "data-bin/{}_minilm", "srcdict": "data-bin/minilm/dict.txt",
        "args": ["--arch", "omoe_roberta_minilm", "--layer-norm-eps", "1e-12", "--moe-experts",
                 "4", "--moe-top-k", "1"],
        "dense": ["--finetune-from-model", "data-bin/minilm/model.pt", "--moe-freq", "0"],
        "moe": ["--finetune-from-model", "data-bin/minilm/moe4.pt"],
        "drop01": ["--finetune-from-model", "data-bin/minilm/moe4_drop01.pt"],
        "moe8": ["--finetune-from-model", "data-bin/minilm/moe8_top2.pt"],
    },
    "scratch": {
        "data": "data-bin/{}", "srcdict": None,
        "args": ["--arch", "omoe_roberta_tiny", "--encoder-layers", "4", "--encoder-embed-dim",
                 "128", "--encoder-ffn-embed-dim", "256", "--moe-experts", "4", "--moe-top-k",
                 "1"],
        "dense": ["--moe-freq", "0"],
        "moe": [],
    },
}


def task_of(corpus: str) -> tuple[list[str], str]:
    """fairseq's task options for a corpus, and its metric (validation, selection, test)."""
    if corpus == "conll2003":
        return TASK + TAGS, "entity_f1"
    if corpus == "disflqa":
        return TASK + SPANS, "f1"
    return TASK + SENTENCES, "accuracy"


def protocol_args(protocol: Protocol, data: Path, batch_size: int,
                  metric: str) -> tuple[list[str], int]:
    """fairseq-train's options of the protocol for this training split and batch size, and
    the updates of an epoch."""
    per_epoch = math.ceil(runs.train_size(data) / batch_size)
    every, total = math.ceil(per_epoch / 4), protocol.max_epoch * per_epoch
    return ["--patience", str(protocol.patience), "--max-epoch", str(protocol.max_epoch),
            "--validate-interval-updates", str(every), "--save-interval-updates", str(every),
            "--keep-interval-updates", "1", "--validate-interval", str(protocol.max_epoch),
            "--total-num-update", str(total), "--warmup-updates", str(round(0.06 * total)),
            "--best-checkpoint-metric", metric,
            *(["--omoe-group-by-length"] if protocol.group_by_length else [])], per_epoch


def relative(options: list[str], root: Path) -> list[str]:
    """Paths under the repository made relative to it (fairseq runs in the repository)."""
    return [o.replace(f"{root}/", "") for o in options]


def identity(c: argparse.Namespace, name: str, options: list[str], lr: float, seed: int,
             stage: str) -> dict:
    """What a run's record says of the run before it trains (its record_key among them)."""
    return {"task": c.corpus, "setting": c.setting, "config": name, "options": options,
            "extra": c.extra, "stage": stage, "seed": seed, "lr": lr}


def run_dir_of(c: argparse.Namespace, name: str, options: list[str], lr: float,
               seed: int) -> Path:
    """The directory a run trains in (the final run of seed 1 is its selection run's)."""
    digest = hashlib.sha1(json.dumps(options).encode()).hexdigest()[:8]
    return c.out / slug(name) / f"lr{lr:g}_seed{seed}_{digest}"


def run(c: argparse.Namespace, name: str, options: list[str], lr: float, seed: int,
        stage: str) -> str:
    """Train, measure and record one run, unless it has its record (or another process holds
    it); resumes a killed one. Says which: "recorded", "held" or "trained"."""
    record = identity(c, name, options, lr, seed, stage)
    key = record_key(record)
    recorded = lambda: any(record_key(r) == key for r in load_records(c.records))  # noqa: E731
    if recorded():
        return "recorded"
    run_dir = run_dir_of(c, name, options, lr, seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return "held"
        if recorded():  # finished by another process meanwhile
            return "recorded"
        print(f"{stage} {name} lr {lr:g} seed {seed}: {run_dir}", flush=True)
        state = runs.load_state(run_dir, options)
        if not state["trained"]:
            runs.train(c.data, [*options, "--lr", str(lr), "--seed", str(seed)], run_dir, state)
        if state["summary"] is None:
            state["summary"] = runs.summary(run_dir, c.data, options)
            runs.save_state(run_dir, state)
        runs.drop_resume_checkpoints(run_dir)
        done = state["summary"]
        test = runs.test_score(run_dir, c.data, c.task, c.metric) if stage == "final" else None
        record.update(
            metric=c.metric, data=relative([str(c.data)], c.root)[0],
            commit=" + ".join(dict.fromkeys(state["commits"])), **done,
            epochs=round(done["updates"] / c.per_epoch, 2),
            curve=runs.curve(run_dir, c.metric), test=test,
            wall_s=round(sum(state["seconds"]), 1), protocol=c.protocol, majority=majority(c),
            date=datetime.now(timezone.utc).isoformat(timespec="seconds"), cpu=runs.cpu_model())
        append_record(c.records, record)
        print(f"  valid {done['valid']} at update {done['best_updates']} of {done['updates']}"
              + ("" if test is None else f", test {test}"), flush=True)
    return "trained"


def majority(c: argparse.Namespace) -> dict[str, float] | None:
    """The majority class's share of the validation and test splits, for accuracy tasks:
    the floor a classifier must beat."""
    if c.metric != "accuracy":
        return None
    return {split: runs.majority_share(c.data, split) for split in ("valid", "test")}


def configurations(c: argparse.Namespace, names: list[str]) -> dict[str, list[str]]:
    """Every chosen configuration's fairseq-train options (all but --lr and --seed, and the
    paths of the run); sets c.data (binarised on first use), c.task, c.metric, c.per_epoch,
    c.protocol (what the records say of it) and c.options (every configuration's options,
    for the bases of RATE_FROM)."""
    setting = SETTINGS[c.setting]
    c.out = c.out or c.root / "runs" / "convergence" / c.setting / c.corpus
    if c.data is None:
        c.data = c.root / setting["data"].format(c.corpus)
        if not (c.data / "input0" / "dict.txt").exists():
            from ..data.cli import prepare_bundled

            srcdict = setting["srcdict"]
            prepare_bundled(c.data, c.corpus, None if srcdict is None else c.root / srcdict,
                            workers=2)
    c.task, c.metric = task_of(c.corpus)
    base = [*c.task, *COMMON, *setting["args"]]
    protocol, c.per_epoch = protocol_args(TASKS[c.corpus] if c.trial is None else
                                          Protocol(*c.trial), c.data,
                                          int(option([*base, *c.extra], "--batch-size")),
                                          c.metric)
    c.options = {name: [*base, *setting[start], *options, *protocol, *c.extra]
                 for name, (start, options) in CONFIGS.items() if start in setting}
    configs = {name: c.options[name] for name in names if name in c.options}
    for name, options in configs.items():
        start = option(options, "--finetune-from-model")
        if start is not None and not (c.root / start).exists():
            raise runs.RunFailed(f"{name} starts from {start}, which is missing: "
                                 f"run `make {start}`")
    some = next(iter(configs.values()))
    given = lambda name: int(option(some, name))  # noqa: E731 (extra options may override)
    c.protocol = {"patience": given("--patience"), "max_epoch": given("--max-epoch"),
                  "validate_interval": given("--validate-interval-updates"),
                  "updates_per_epoch": c.per_epoch,
                  "group_by_length": "--omoe-group-by-length" in some}
    return configs


def early_updates(c: argparse.Namespace) -> int:
    """Where an early run stops: at the first validation after EARLY_EPOCHS[-1] epochs, the
    early-learning table's last point."""
    every = c.protocol["validate_interval"]
    return every * math.ceil(EARLY_EPOCHS[-1] * c.per_epoch / every)


def options_of(c: argparse.Namespace, name: str, stage: str) -> list[str]:
    """A run's fairseq-train options (all but --lr and --seed): its configuration's; an early
    run's stop at early_updates, under the same schedule (--total-num-update is the cap's)."""
    if stage == "early":
        return [*c.options[name], "--max-update", str(early_updates(c))]
    return c.options[name]


def rates_of(c: argparse.Namespace, records: list[dict], name: str) -> list[float]:
    """The learning rates configuration `name` is selected over (see RATE_FROM)."""
    base = RATE_FROM.get(name)
    return selection_grid(records, c.corpus, c.lr_grid,
                          None if base is None else (base, c.options[base]))


def final_plan(c: argparse.Namespace, records: list[dict],
               names: list[str]) -> tuple[dict[str, float], dict[str, list[int]]]:
    """Each configuration's selected rate and the seeds of its final runs: --seeds, the first
    of them for ONE_SEED, none for a variant other than the best (results.best_variant,
    chosen over every corpus of c.peers: it needs AdamW's, OMoE's and every variant's
    selection on each). Raises SelectionIncomplete naming every selection run still
    missing."""
    refused = []

    def rate(peer: argparse.Namespace, name: str) -> Optional[float]:
        try:
            return chosen_lr(records, peer.corpus, name, peer.options[name],
                             rates_of(peer, records, name))
        except SelectionIncomplete as e:
            refused.extend(e.reasons)
            return None

    rates = {name: rate(c, name) for name in names}
    variants = [name for name in names if name in VARIANTS]
    compared = {peer.corpus: (peer, {name: rate(peer, name) for name in [*CORE, *VARIANTS]})
                for peer in (c.peers.values() if variants else ())}
    if refused:
        raise SelectionIncomplete(*refused)
    seeds = {name: c.seeds[:1] if name in ONE_SEED else c.seeds for name in names}
    if variants:
        best = best_variant(records, {
            corpus: ({v: (peer.options[v], chosen[v]) for v in VARIANTS},
                     *((n, peer.options[n], chosen[n]) for n in CORE))
            for corpus, (peer, chosen) in compared.items()})
        for name in variants:
            if name != best:
                seeds[name] = []
    return rates, seeds


def planned(c: argparse.Namespace, records: list[dict], stage: str, names: list[str]
            ) -> tuple[list[tuple[str, float, int]], list[tuple[str, str, list[str]]]]:
    """A stage's runs of these configurations in order, (name, rate, seed), and those that
    cannot be planned yet, (stage, "name on corpus", the incomplete selections they wait
    for). Each configuration is planned on its own: one that waits holds back no other."""
    todo, waiting = [], []
    for name in names:
        try:
            if stage == "final":
                rates, seeds = final_plan(c, records, [name])
                todo += [(name, rates[name], seed) for seed in seeds[name]]
            elif stage == "early":  # where the final run of seed 1 has no curve recorded
                todo += [(name, r["lr"], 1) for r in find(
                    records, task=c.corpus, config=name, stage="final", seed=1,
                    options=c.options[name]) if not r.get("curve")]
            else:
                todo += [(name, lr, 1) for lr in rates_of(c, records, name)]
        except SelectionIncomplete as e:
            waiting.append((stage, f"{name} on {c.corpus}", e.reasons))
    return todo, waiting


def waiting_for(waits: list[tuple[str, str, list[str]]]) -> list[str]:
    """One line of why for every set of incomplete selections, naming each missing selection
    once and every run that waits for that set (the variants' final runs on every corpus wait
    for the same ones: each variant's selection everywhere)."""
    groups: dict[tuple[str, frozenset], tuple[list[str], list[str]]] = {}
    for stage, who, lines in waits:
        whos, _ = groups.setdefault((stage, frozenset(lines)), ([], lines))
        whos.append(who)
    return [(f"the final runs of {'; '.join(whos)} wait for:" if stage == "final" else
             f"the selection runs of {'; '.join(whos)} take their base's rate, so wait for:")
            + "".join(f"\n  {line}" for line in lines)
            for (stage, _), (whos, lines) in groups.items()]


def work(steps: list[tuple[argparse.Namespace, str, list[str]]], wait: bool,
         train: Optional[Callable[..., str]] = None, until: Optional[float] = None,
         fill: bool = False) -> list[str]:
    """Train the steps' runs (corpus, stage, configurations) in order, each run once however
    many processes share the work, starting again from the first step after every run
    trained (another process may have completed what an earlier step waited for). A run whose
    training has finished goes first wherever it stands (the final run of seed 1, once its
    selection is complete): scoring it takes minutes, and its checkpoint lives only on the
    machine that trained it. With until (a time.time()), a run not likely to finish by then
    (expected_minutes; unknown counts as not) is passed over for a later one that is: on a
    machine lent until then, a run cut off halfway is lost. With fill as well, the runs
    passed over come last instead, in their order: on a machine that is kept, a run cut off
    continues from its last checkpoint next time, and on a fresh one only time that would
    have been idle was spent on it. Once a pass trains nothing, returns why runs remain (held
    by another process, waiting for a selection, passed over); with wait, sleeps WAIT_S and
    passes again while any is held or waits (with until: while another process holds one,
    and until then). train: what trains a run, with run's arguments and answers (default:
    run)."""
    train = train or run
    while True:
        held, waiting, late, queue = [], [], [], []
        for c, stage, names in steps:
            records = load_records(c.records)
            todo, waits = planned(c, records, stage, names)
            waiting += waits
            keys = {record_key(r) for r in records}
            for name, lr, seed in todo:
                options = options_of(c, name, stage)
                if record_key(identity(c, name, options, lr, seed, stage)) in keys:
                    continue
                here = finished(c, name, lr, seed, stage)
                what = f"{stage} {name} on {c.corpus}, lr {lr:g} seed {seed}"
                passed = False
                if until is not None and not here:
                    done, total, running = progress(c, name, lr, seed, stage)
                    minutes = expected_minutes(c, name, records, done, total, stage)
                    passed = not running and (minutes is None
                                              or time.time() + 60 * minutes > until)
                    if passed and not fill:
                        late.append(f"{what}: not likely to finish by --until (" + (
                            "no record of its corpus to estimate from)" if minutes is None else
                            f"about {minutes:.0f} min)"))
                        continue
                queue.append((passed, not here, what, c, stage, name, lr, seed))
        queue.sort(key=lambda q: q[:2])  # stable: the order otherwise
        for _, _, what, c, stage, name, lr, seed in queue:
            status = train(c, name, options_of(c, name, stage), lr, seed, stage)
            if status == "trained":
                break
            if status == "held":
                held.append(f"{what}: another process is running it")
        else:
            over = until is not None and (not held or time.time() >= until)
            if not held + waiting or not wait or over:
                return held + waiting_for(waiting) + late
            time.sleep(WAIT_S)


def finished(c: argparse.Namespace, name: str, lr: float, seed: int, stage: str) -> bool:
    """Whether the run's training has finished on this machine (recorded or not)."""
    run_dir = run_dir_of(c, name, options_of(c, name, stage), lr, seed)
    return runs.load_state(run_dir, [])["trained"]


def unrecorded(steps: list[tuple[argparse.Namespace, str, list[str]]]
               ) -> list[tuple[argparse.Namespace, str, float, int, str]]:
    """Every run work(steps) would still train, in its order, (c, name, rate, seed, stage),
    training nothing: work() on a copy of the records, each run recorded there at once with a
    placeholder score. So a run that waits for a selection is planned as though every run
    before it had finished; its rate, and which variant is the best, are the placeholders'."""
    left = []
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "records.jsonl"
        copy.write_text("".join(json.dumps(r) + "\n" for r in load_records(steps[0][0].records)))

        def pretend(c, name, options, lr, seed, stage):
            record = identity(c, name, options, lr, seed, stage)
            if any(record_key(r) == record_key(record) for r in load_records(copy)):
                return "recorded"
            # a final run recorded from now on holds its curve: no early run is planned
            append_record(copy, {**record, "valid": 0.0, "cos": 0.0, "curve": [[0, 0.0]]})
            left.append((c, name, lr, seed, stage))
            return "trained"

        work([(argparse.Namespace(**{**vars(c), "records": copy}), stage, names)
              for c, stage, names in steps], wait=False, train=pretend)
    return left


def plan(steps: list[tuple[argparse.Namespace, str, list[str]]]) -> str:
    """--plan: the runs work(steps) would still train, in its order (unrecorded), each with
    its state (running in another process, the last update its log reached) and the time it
    is likely to take (expected_minutes). A run that waits for a selection has its rate, and
    the best variant its name, chosen by then. The final run of seed 1 trains nothing (it
    scores its selection run on test) unless its selection run is recorded and its
    checkpoint is not here."""
    real = load_records(steps[0][0].records)
    known = {(c.corpus, stage, name, lr, seed) for c, stage, names in steps
             for name, lr, seed in planned(c, real, stage, names)[0]}
    keys = {record_key(r) for r in real}
    lines, minutes, guessed = [], [], 0
    for c, name, lr, seed, stage in unrecorded(steps):
        now = (c.corpus, stage, name, lr, seed) in known
        label = name if now or stage != "final" or name not in VARIANTS else "the best variant"
        line = (f"{c.corpus} {stage} {label}, " + (f"lr {lr:g}" if now else "its chosen rate")
                + f", seed {seed}")
        # its selection run recorded (for a run that waits, the one the placeholders chose:
        # all a variant's selections may be) but trained on another machine
        selected = record_key(identity(c, name, c.options[name], lr, 1, "select")) in keys
        again = (stage == "final" and seed == 1 and selected
                 and not finished(c, name, lr, seed, stage))
        if stage == "final" and seed == 1 and not again:
            lines.append(f"{line}: scores its selection run on test")
            continue
        done, total, held = progress(c, name, lr, seed, stage)
        state = ("running" if held else "started" if done else
                 "not started" if now else "waits for a selection")
        if again:  # its selection run trained on another machine
            state = ("its selection run's checkpoint is not here: trains it again"
                     + (f", {state}" if held or done else ""))
        if done:
            state += f", update {done} of at most {total}"
        expected = expected_minutes(c, name, real, done, total, stage)
        if expected is not None:
            minutes.append(expected)
            state += f" (about {expected:.0f} min)"
        else:
            guessed += 1
        lines.append(f"{line}: {state}")
    if not lines:
        return "Nothing left to train."
    hours = sum(minutes) / 60
    total = f"{len(minutes) + guessed} to train"
    if minutes:
        total += f": about {hours:.1f} h of training, {hours / 2:.1f} h at two at a time"
    if guessed:
        total += f", {'and ' if minutes else ''}{guessed} with no record of their corpus yet " \
            "to estimate from"
    return "\n".join(["Runs left, in the order --all takes them:",
                      *(f"{i:3}. {line}" for i, line in enumerate(lines, 1)), total + "."])


def expected_minutes(c: argparse.Namespace, name: str, records: list[dict], done: int,
                     total: int, stage: str) -> Optional[float]:
    """The minutes a run of configuration `name` is likely to take still, with `done` of at
    most `total` updates trained (progress): the mean wall time of its corpus's records of
    the same configuration, else of any (early runs aside), less the share done; for an early
    run, which trains all of its `total`, the updates left at their mean pace; None with no
    record of its corpus."""
    corpus = [r for r in records if r["task"] == c.corpus and r["stage"] != "early"]
    walls = [r for r in corpus if r["config"] == name] or corpus
    if not walls:
        return None
    if stage == "early":
        return statistics.mean(r["wall_s"] / r["updates"] for r in walls) / 60 * max(
            0, total - done)
    return statistics.mean(r["wall_s"] for r in walls) / 60 * max(0.0, 1 - done / total)


def progress(c: argparse.Namespace, name: str, lr: float, seed: int,
             stage: str) -> tuple[int, int, bool]:
    """A run's last update in its log (0 if none), the most it trains (the epoch cap; an early
    run's early_updates), and whether a process holds it now."""
    run_dir = run_dir_of(c, name, options_of(c, name, stage), lr, seed)
    total = early_updates(c) if stage == "early" else c.protocol["max_epoch"] * c.per_epoch
    if not run_dir.exists():
        return 0, total, False
    log = run_dir / "train.log"
    updates = re.findall(r"num_updates[ =](\d+)", log.read_text() if log.exists() else "")
    with open(run_dir / "lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = False
        except BlockingIOError:
            held = True
    return int(updates[-1]) if updates else 0, total, held


def all_steps(corpora: list[str]) -> list[tuple[str, str, list[str]]]:
    """--all's order: AdamW's and OMoE's selection, then final runs, on every corpus (what the
    comparison is about); the same for the variants (the best of them, the candidate for a
    new default, is chosen over every corpus's selection, and its final runs wait for all of
    them); the same for the other configurations (dense, the baselines but LAST, the
    control); then the scale point on its task; then AdamW's and OMoE's early runs on every
    corpus (where their final run of seed 1 has no curve recorded); last, LAST's selection and
    final runs on every corpus."""
    rest = [name for name in CONFIGS if name not in [*CORE, *VARIANTS, *SCALE_POINT, *LAST]]
    return [*((t, stage, names) for names in (CORE, VARIANTS, rest)
              for stage in ("select", "final") for t in corpora),
            *((SCALE_TASK, stage, SCALE_POINT) for stage in ("select", "final")),
            *((t, "early", CORE) for t in corpora),
            *((t, stage, LAST) for stage in ("select", "final") for t in corpora)]


def for_corpus(c: argparse.Namespace, corpus: str) -> argparse.Namespace:
    """A copy of c set up for one corpus (configurations): chosen, its configurations
    (--configs, or all of the setting with the scale point on SCALE_TASK only). --out and
    --data are c.corpus's: another corpus takes its own."""
    c = argparse.Namespace(**{**vars(c), "corpus": corpus,
                              **({} if corpus == c.corpus else {"out": None, "data": None})})
    chosen = [name for name in CONFIGS if slug(name) in c.configs] if c.configs else [
        name for name in CONFIGS if name not in SCALE_POINT or corpus == SCALE_TASK]
    c.chosen = list(configurations(c, chosen))
    print(f"{corpus} ({c.setting}): {c.protocol}", flush=True)
    return c


def corpora(c: argparse.Namespace) -> dict[str, argparse.Namespace]:
    """Every corpus of the comparison (TASKS) set up from c, each with .peers: all of them,
    the corpora the best variant is chosen over (final_plan)."""
    out = {corpus: for_corpus(c, corpus) for corpus in TASKS}
    for one in out.values():
        one.peers = out
    return out
