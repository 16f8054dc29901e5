"""Compare fine-tuning configurations (CONFIGS) trained to convergence, each at its own best
learning rate; keep every finished run.

    python scripts/compare_optimizers.py --corpus C --select [--lr-grid 3e-5 1e-4 3e-4]
    python scripts/compare_optimizers.py --corpus C [--final] [--seeds 1 2 3] [--lr-grid ...]
    python scripts/compare_optimizers.py --all   (twice side by side: the whole comparison)
    python scripts/compare_optimizers.py --plan  (what --all has left, and how long it takes)
    python scripts/compare_optimizers.py --report
  each also takes [--configs NAME ...] [--setting pretrained|scratch] [--out DIR]
  [fairseq-train options added to every run]; the modes that train, [--until HH:MM] (start
  no run that is not likely to finish by then) [--fill] (train those last instead)

The protocol, the configurations, what each mode trains and how a killed run resumes:
omoe_plugin/analysis/comparison.py.
"""

import argparse
import os
import sys
from datetime import datetime, timedelta
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: the protocol is single-threaded

from omoe_plugin.analysis import runs  # noqa: E402
from omoe_plugin.analysis.comparison import (  # noqa: E402
    BASELINES, CANDIDATES, CONFIGS, CONTROLS, LR_GRID, SCALE_BAR, SETTINGS, TASKS, VARIANTS,
    all_steps, corpora, final_plan, for_corpus, plan, relative, work)
from omoe_plugin.analysis.results import (  # noqa: E402
    SelectionIncomplete, find, load_records, report, slug, task_section)

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "results" / "convergence.jsonl"
REPORT = ROOT / "docs" / "results" / "convergence.md"


def clock(text: str) -> float:
    """HH:MM as the time.time() of its next occurrence on this machine's clock."""
    try:
        at = datetime.strptime(text, "%H:%M").time()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time of day as HH:MM") from None
    now = datetime.now()
    when = datetime.combine(now.date(), at)
    return (when if when > now else when + timedelta(days=1)).timestamp()


def main(argv: list[str] | None = None) -> None:
    # no abbreviations: fairseq's --lr and --seed would be taken for --lr-grid and --seeds
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                     epilog="Other options go to every fairseq-train run.")
    parser.add_argument("--corpus", choices=list(TASKS), default="movie_reviews")
    parser.add_argument("--setting", choices=list(SETTINGS), default="pretrained")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--select", action="store_true", help="the selection runs: seed 1 at "
                      "every rate of --lr-grid, validation only")
    mode.add_argument("--final", action="store_true",
                      help="the final runs (the default): --seeds at each configuration's "
                      "selected rate, test scored once")
    mode.add_argument("--all", action="store_true",
                      help="every corpus's selection and final runs, in the order the "
                      "comparison needs them (all_steps); waits for runs another process "
                      "holds: run it twice side by side")
    mode.add_argument("--plan", action="store_true",
                      help="train nothing: list the runs --all would still train, in its "
                      "order, with their state and the hours they are likely to take")
    mode.add_argument("--report", action="store_true",
                      help="train nothing: write --report-file from the records")
    parser.add_argument("--lr-grid", type=float, nargs="+", default=LR_GRID)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="final runs")
    parser.add_argument("--configs", nargs="+", default=None,
                        help="only these configurations (run-directory names; default: all, "
                        "the scale point on SCALE_TASK only)")
    parser.add_argument("--out", type=Path, help="default: runs/convergence/SETTING/CORPUS")
    parser.add_argument("--data", type=Path,
                        help="the binarised corpus (default: the setting's, made on first use)")
    parser.add_argument("--records", type=Path, default=RECORDS)
    parser.add_argument("--report-file", type=Path, default=REPORT)
    parser.add_argument("--until", type=clock, metavar="HH:MM",
                        help="start no run that is not likely to finish by then (the next "
                        "such time on this machine's clock; estimated from the recorded "
                        "runs' wall times): for a machine lent for a while, where a run cut "
                        "off is lost")
    parser.add_argument("--fill", action="store_true",
                        help="with --until: once no run left is likely to finish by then, "
                        "train the rest anyway, in order (for a machine that is kept: a run "
                        "cut off continues from its last checkpoint when the same command is "
                        "run again there)")
    parser.add_argument("--protocol", dest="trial", type=int, nargs=2, metavar=("P", "N"),
                        help="patience and epoch cap instead of the corpus's (TASKS), for "
                        "trials and tests; recorded with the runs")
    c, extra = parser.parse_known_args(argv)
    for path in ("out", "data", "records", "report_file"):  # given from here, used from ROOT
        if getattr(c, path) is not None:
            setattr(c, path, getattr(c, path).resolve())
    os.chdir(ROOT)
    c.root = ROOT
    c.extra = relative(extra, ROOT)
    if c.fill and c.until is None:
        parser.error("--fill goes with --until: it says what to train once no run fits")
    owned = {"--lr", "--seed", "--save-dir", "--tensorboard-logdir"} & set(c.extra)
    if owned:
        parser.error(f"{sorted(owned)} are set per run (rates: --lr-grid, seeds: --seeds)")
    if c.report:
        command = "python scripts/compare_optimizers.py --report" + (
            f" --records {relative([str(c.records)], ROOT)[0]}" if c.records != RECORDS else "")
        text = report(load_records(c.records), command, order=list(TASKS),
                      candidates=CANDIDATES, other_bars=SCALE_BAR, controls=CONTROLS,
                      baselines=BASELINES)
        c.report_file.parent.mkdir(parents=True, exist_ok=True)
        c.report_file.write_text(text)
        print(text + f"\nwrote {c.report_file}")
        return
    names = {slug(name): name for name in CONFIGS}
    unknown = set(c.configs or ()) - set(names)
    if unknown:
        parser.error(f"unknown --configs {sorted(unknown)}: choose from {sorted(names)}")
    if c.all or c.plan:
        if c.data is not None or c.out is not None:
            parser.error("--all trains every corpus: --data and --out name one")
        every = corpora(c)
        steps = [(every[t], stage, [name for name in configs if name in every[t].chosen])
                 for t, stage, configs in all_steps(list(TASKS))]
        if c.plan:
            print(plan(steps))
        else:
            for reason in work(steps, wait=True, until=c.until, fill=c.fill):
                print(reason, flush=True)
        return
    c = for_corpus(c, c.corpus)
    stage = "select" if c.select else "final"
    if stage == "final":
        if set(VARIANTS) & set(c.chosen):  # the best variant is chosen over every corpus
            c.peers = corpora(c)
        try:
            rates, seeds = final_plan(c, load_records(c.records), c.chosen)
        except SelectionIncomplete as e:
            sys.exit(f"refusing the final runs:\n  {e}")
        print("final runs: " + "; ".join(f"{name} at lr {rates[name]:g}, seeds "
                                         f"{', '.join(map(str, seeds[name])) or 'none'}"
                                         for name in c.chosen), flush=True)
    for reason in work([(c, stage, c.chosen)], wait=False, until=c.until, fill=c.fill):
        print(reason, flush=True)
    done = find(load_records(c.records), task=c.corpus)
    if done:
        print(task_section(c.corpus, done, candidates=[*CANDIDATES, *BASELINES],
                           other_bars=SCALE_BAR))


if __name__ == "__main__":
    try:
        main()
    except runs.RunFailed as e:
        sys.exit(str(e))
