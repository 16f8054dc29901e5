"""The converged comparison's evidence: records of finished runs (one JSON line each), the
learning rate each configuration's selection runs chose, and the markdown report made from
the records alone (scripts/compare_optimizers.py writes and reads them)."""

import fcntl
import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Iterable, Mapping, Optional


@dataclass(frozen=True)
class Protocol:
    """How long a run trains: until validation has not improved for `patience` validations,
    at most `max_epoch` epochs; and its batches: random (fairseq's) or grouped by length
    (--omoe-group-by-length). Fixed per corpus before comparing."""

    patience: int
    max_epoch: int
    group_by_length: bool = False


# The bar OMoE is held to against AdamW at convergence, on each task, over 3 seeds a row: its
# test score no worse than AdamW's beyond one seed spread, and its experts' output cosine lower
# by at least 0.05 and by more than three spreads (a spread: the larger of the two rows'
# standard deviations over seeds). A setting meets it over the comparison when its accuracy
# is kept on all BAR_TASKS tasks and its experts are apart on at least APART_TASKS of them.
BAR_SEEDS, KEEP_SPREADS, APART_DROP, APART_SPREADS = 3, 1, 0.05, 3
BAR_TASKS, APART_TASKS = 3, 2
SHOWN_COMMITS = 3  # a task's report line names at most this many commits
EARLY_EPOCHS = (0.25, 0.5, 1, 2)  # where the early-learning table reads the curves


class SelectionIncomplete(ValueError):
    """A configuration's selection runs do not cover the learning-rate grid yet: one reason
    for each selection missing (`reasons`, each once), the message lists them."""

    def __init__(self, *reasons: str):
        self.reasons = list(dict.fromkeys(reasons))
        super().__init__("\n  ".join(self.reasons))


def slug(name: str) -> str:
    """A configuration's run-directory name, also its name for --configs."""
    return re.sub(r"\W+", "_", name).strip("_").lower()


def fmt(values: list, digits: int) -> str:
    """Mean ± standard deviation; one value alone (one seed has no spread); "—" where a value
    is missing."""
    if not values or None in values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def record_key(record: dict) -> tuple:
    """What identifies a run: the same key means the same run, trained once."""
    return (record["task"], record["config"], record["stage"], record["seed"], record["lr"],
            tuple(record["options"]))


def load_records(path: Path) -> list[dict]:
    """Every record of the file, in the order written (none for a missing file)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_record(path: Path, record: dict) -> None:
    """Add one record as one line, under an exclusive lock: two comparisons may finish runs
    at the same time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps(record) + "\n")


def find(records: Iterable[dict], **fields) -> list[dict]:
    """The records whose fields equal these (options compared as lists)."""
    return [r for r in records if all(r.get(k) == v for k, v in fields.items())]


def chosen_lr(records: list[dict], task: str, config: str, options: list[str],
              grid: list[float]) -> float:
    """The grid's learning rate with the best validation score among the configuration's
    selection runs (seed 1), the smaller one on a tie. Raises SelectionIncomplete, naming
    what is missing, while any rate of the grid has no selection record."""
    found = {r["lr"]: r["valid"] for r in find(records, task=task, config=config,
                                                stage="select", seed=1, options=options)}
    missing = [lr for lr in grid if lr not in found]
    if missing:
        raise SelectionIncomplete(
            f"{config!r} on {task}: no selection run yet at lr {', '.join(map(str, missing))} "
            f"(of the grid {', '.join(map(str, grid))}); run the same command with --select "
            "first, or leave the configuration out (--configs)")
    return max(sorted(grid), key=lambda lr: found[lr])


def selection_record(records: list[dict], task: str, config: str, options: list[str],
                     lr: float) -> dict:
    """The configuration's selection run (seed 1) at this rate; raises SelectionIncomplete
    while it has none."""
    found = find(records, task=task, config=config, stage="select", seed=1, options=options,
                 lr=lr)
    if not found:
        raise SelectionIncomplete(f"{config!r} on {task}: no selection run yet at lr {lr}; run "
                                  "the same command with --select first")
    return found[-1]


def best_variant(records: list[dict],
                 selections: Mapping[str, tuple[dict[str, tuple[list[str], float]],
                                                tuple[str, list[str], float],
                                                tuple[str, list[str], float]]]) -> str:
    """The one variant whose final runs the comparison pays for, on every task, chosen from
    the selection runs alone (seed 1, validation) over the tasks: task -> (variants, adamw,
    default), variants: name -> (options, rate), adamw and default: (name, options, rate).
    On each task a variant may move the experts apart as the bar asks (its expert cosine at
    least APART_DROP below AdamW's), or less, keep the diversity (at least half of the
    default's drop below AdamW's). The variants that move them apart on at least APART_TASKS
    tasks (on every task, when fewer are given) come first, then those that keep it on as
    many, then the rest; among the first of these groups that has any, the one whose
    validation score is the most above the default's, on average over the tasks (the first
    given on a tie). The default keeps the accuracy at convergence but not the bar's distance
    between the experts, so the variant worth paying for is the one that reaches that
    distance; its final runs then show whether its accuracy holds. One variant for every
    task, so that a new default can be held to the bar on all of them. Raises
    SelectionIncomplete naming every selection run still missing."""
    found, missing = {}, []
    for task, (variants, adamw, default) in selections.items():
        for name, options, lr in (adamw, default,
                                  *((n, o, lr) for n, (o, lr) in variants.items())):
            try:
                found[task, name] = selection_record(records, task, name, options, lr)
            except SelectionIncomplete as e:
                missing += e.reasons
    if missing:
        raise SelectionIncomplete(*missing)
    apart: dict[str, int] = {}
    keeps: dict[str, int] = {}
    gains: dict[str, list[float]] = {}
    for task, (variants, (adamw, *_), (default, *_)) in selections.items():
        ceiling = (found[task, default]["cos"] + found[task, adamw]["cos"]) / 2
        for name in variants:
            cos = found[task, name]["cos"]
            apart[name] = apart.get(name, 0) + (found[task, adamw]["cos"] - cos >= APART_DROP)
            keeps[name] = keeps.get(name, 0) + (cos <= ceiling)
            gains.setdefault(name, []).append(found[task, name]["valid"]
                                              - found[task, default]["valid"])
    needed = min(APART_TASKS, len(selections))
    return max(gains, key=lambda name: (apart[name] >= needed, keeps[name] >= needed,
                                        statistics.mean(gains[name])))


def selection_grid(records: list[dict], task: str, grid: list[float],
                   base: Optional[tuple[str, list[str]]] = None) -> list[float]:
    """The learning rates a configuration's selection runs cover: the grid, or, for one that
    takes the rate its base configuration (name, options) chose, that one rate; raises
    SelectionIncomplete, naming the base, while the base's selection is incomplete."""
    return grid if base is None else [chosen_lr(records, task, *base, grid)]


def _label(record: dict) -> str:
    """A report row's name: the configuration, its setting unless pretrained, and the extra
    fairseq options it was run with."""
    label = record["config"]
    if record.get("setting", "pretrained") != "pretrained":
        label += f" ({record['setting']})"
    if record.get("extra"):
        label += f", `{' '.join(record['extra'])}`"
    return label


def _groups(records: list[dict]) -> dict[str, list[dict]]:
    """Records by report row (configuration and options), in the order first written; rows
    whose options differ in what the label does not show (the protocol, say) are numbered."""
    rows: dict[tuple, list[dict]] = {}
    for r in records:
        rows.setdefault((r["config"], tuple(r["options"])), []).append(r)
    labelled: dict[str, list[dict]] = {}
    for rs in rows.values():
        label, base, n = _label(rs[0]), _label(rs[0]), 1
        while label in labelled:
            n += 1
            label = f"{base} [{n}]"
        labelled[label] = rs
    return labelled


def _protocol_line(records: list[dict]) -> str:
    lines = {f"patience {p['patience']} validations, at most {p['max_epoch']} epochs of "
             f"{p['updates_per_epoch']} updates, validation every {p['validate_interval']} "
             "updates" + (", batches grouped by length" if p.get("group_by_length") else "")
             for p in (r["protocol"] for r in records)}
    return "Protocol: " + "; ".join(sorted(lines)) + "."


def _mean(values: list, digits: int, scale: float = 1.0) -> str:
    """The mean (divided by scale), or "—" where a value is missing."""
    if not values or None in values:
        return "—"
    return f"{statistics.mean(values) / scale:.{digits}f}"


def _difference(base: list[dict], row: list[dict], key: str) -> tuple[float, float]:
    """The row's mean of `key` minus the base's, and its spread: the larger of the two rows'
    standard deviations over seeds."""
    b, r = [x[key] for x in base], [x[key] for x in row]
    return statistics.mean(r) - statistics.mean(b), max(statistics.stdev(b), statistics.stdev(r))


def verdict(base: list[dict], row: list[dict], score: str = "test") -> Optional[dict]:
    """A row's final runs against the base's (AdamW's) by the bar: the differences of the
    mean score (test, or "valid": the bar on validation) and of the mean expert cosine (row
    minus base), under those keys, their spreads (KEY_spread), and whether the accuracy is
    kept and the experts are apart; None while a row has fewer than BAR_SEEDS seeds."""
    if min(len(base), len(row)) < BAR_SEEDS:
        return None
    out = {}
    for key in (score, "cos"):
        out[key], out[f"{key}_spread"] = _difference(base, row, key)
    out["kept"] = out[score] >= -KEEP_SPREADS * out[f"{score}_spread"]
    out["apart"] = -out["cos"] >= max(APART_DROP, APART_SPREADS * out["cos_spread"])
    return out


def _verdicts(records: list[dict], base: str, candidates: list[str],
              score: str = "test") -> dict[str, dict]:
    """The candidates' verdicts against the base configuration, from one task's final runs
    (rows run with extra options or a numbered twin are not compared), on that score."""
    finals = _groups(find(records, stage="final"))
    if base not in finals:
        return {}
    found = {name: verdict(finals[base], finals[name], score) for name in candidates
             if name in finals}
    return {name: v for name, v in found.items() if v is not None}


def _bar_section(records: list[dict], base: str, candidates: list[str], metric: str) -> list[str]:
    """The verdict table of one task, or nothing while no candidate has its seeds."""
    verdicts = _verdicts(records, base, candidates)
    if not verdicts:
        return []
    yes = lambda ok: "**yes**" if ok else "no"  # noqa: E731
    out = ["", f"Against {base} ({BAR_SEEDS} seeds a row; a spread is the larger standard "
           f"deviation of the two rows): the accuracy is kept if the test {metric} is at most "
           f"{KEEP_SPREADS} spread lower, the experts are apart if their cosine is at least "
           f"{APART_DROP} and {APART_SPREADS} spreads lower.", "",
           f"| configuration | test {metric} difference | spread | accuracy kept | expert "
           "cosine difference | spread | experts apart |", "|---|---|---|---|---|---|---|"]
    for name, v in verdicts.items():
        out.append(f"| {name} | {v['test']:+.1f} | {v['test_spread']:.1f} | {yes(v['kept'])} | "
                   f"{v['cos']:+.3f} | {v['cos_spread']:.3f} | {yes(v['apart'])} |")
    return out


def _score_after(curve: list[list[float]], updates: int) -> Optional[float]:
    """The score of the curve's first validation at or after `updates` (validations need not
    fall on an epoch's fraction: CoNLL-2003's epoch of 439 updates is validated at 440);
    None past its last."""
    return next((score for n, score in curve if n >= updates), None)


def _early_section(records: list[dict], metric: str) -> list[str]:
    """The validation score early in training (the first validation after EARLY_EPOCHS
    epochs, mean over seeds) against the best, for the final rows whose records all hold
    their curve, and, marked †, for those whose records hold none, from their early runs (the
    first epochs of the final run of seed 1 trained again: stage "early"), against the best
    of their final runs of the same seeds; nothing while no row has a curve. Every run
    reaches the last point: patience stops one at least 2 epochs (8 validations) after its
    best, and an early run trains to it."""
    early = _groups(find(records, stage="early"))
    rows = {}  # label: (the records of the curves, those of the best)
    for label, rs in _groups(find(records, stage="final")).items():
        if all(r.get("curve") for r in rs):
            rows[label] = rs, rs
        elif label in early:
            seeds = {r["seed"] for r in early[label]}
            rows[f"{label} †"] = early[label], [r for r in rs if r["seed"] in seeds]
    if not rows:
        return []
    per_epoch = records[0]["protocol"]["updates_per_epoch"]
    points = [round(e * per_epoch) for e in EARLY_EPOCHS]
    out = ["", f"Early learning (valid {metric} at the first validation after, mean over "
           "seeds; the rows whose records hold their validation curve, and, marked †, those "
           f"recorded without it: the first {EARLY_EPOCHS[-1]} epochs of their final run of "
           "seed 1 trained again, and that run's best):", "",
           "| configuration | seeds | " + " | ".join(
               f"{e:g} epoch{'s' if e > 1 else ''} ({n} updates)"
               for e, n in zip(EARLY_EPOCHS, points)) + " | best |",
           "|---|---|" + "---|" * (len(points) + 1)]
    for label, (curves, best) in rows.items():
        cells = [_mean([_score_after(r["curve"], n) for r in curves], 1) for n in points]
        out.append(f"| {label} | {', '.join(str(s) for s in sorted(r['seed'] for r in curves))}"
                   " | " + " | ".join(cells) + f" | {fmt([r['valid'] for r in best], 1)} |")
    return out


def _last_epoch_gain(capped: list[dict], metric: str) -> str:
    """How far from a plateau the runs the epoch cap ended were: the rise of their best
    validation score over their last epoch (their best against the best up to an epoch before
    the end), for those whose records hold their curve."""
    gains = []
    for r in capped:
        if r.get("curve"):
            end = r["updates"] - r["protocol"]["updates_per_epoch"]
            before = max((score for n, score in r["curve"] if n <= end), default=0.0)
            gains.append(max(score for _, score in r["curve"]) - before)
    if not gains:
        return ""
    return (f"; the best valid {metric} of the {len(gains)} whose records hold their curve rose "
            f"by {statistics.mean(gains):.1f} on average over their last epoch "
            f"({min(gains):.1f} to {max(gains):.1f})")


def _commits(records: list[dict]) -> str:
    """The distinct commits the runs were trained at (a run resumed after a change has
    several), abbreviated, those with changes not committed marked; past SHOWN_COMMITS, their
    count and the marked ones (each record names its own)."""
    commits = sorted(dict.fromkeys(c for r in records for c in r["commit"].split(" + ")))
    dirty = [c[:12] for c in commits if c.endswith("-dirty")]
    if len(commits) > SHOWN_COMMITS:
        return (f"{len(commits)} commits (each record names its own)"
                + (f"; with uncommitted changes: {', '.join(dirty)}" if dirty else ""))
    return ", ".join(c[:12] + (" (with uncommitted changes)" if c.endswith("-dirty") else "")
                     for c in commits)


def task_section(task: str, records: list[dict], base: str = "MoE + AdamW",
                 candidates: Iterable[str] = ("MoE + OMoE",),
                 other_bars: Mapping[str, Iterable[str]] = MappingProxyType({})) -> str:
    """One task's markdown: its protocol, the final runs (test scored once per seed), the
    candidates' verdicts against the base configuration (the bar above), and those of
    other_bars' candidates against their own base (base: candidates), and the learning-rate
    selection they rest on (seed 1, validation only)."""
    metric = records[0]["metric"].replace("accuracy", "acc").replace("_", " ")
    settings = sorted({r.get("setting", "pretrained") for r in records})
    flag = "" if settings == ["pretrained"] else f" --setting {'|'.join(settings)}"
    ran = (f"Run by `python scripts/compare_optimizers.py --corpus {task}{flag} --select`, then "
           "the same without `--select` (with the fairseq options a row names), on "
           f"{', '.join(sorted({r['cpu'] for r in records}))}, code at "
           f"{_commits(records)}.")
    floor = next((r["majority"] for r in records if r.get("majority")), None)
    if floor is not None:
        ran += (f" Always answering the majority class scores {floor['valid']:.1f} on "
                f"validation and {floor['test']:.1f} on test.")
    whole = [r for r in records if r["stage"] != "early"]
    capped = [r for r in whole
              if r["updates"] >= r["protocol"]["max_epoch"] * r["protocol"]["updates_per_epoch"]]
    if capped:
        ran += (f" The epoch cap, not patience, ended {len(capped)} of its {len(whole)} runs: "
                "their validation had improved within the patience's last validations"
                + _last_epoch_gain(capped, metric) + ".")
    out = [f"## {task}", "", _protocol_line(records), ran, ""]
    finals = _groups(find(records, stage="final"))
    out += [f"| configuration | seeds | lr | updates to best | valid {metric} | test {metric} | "
            "expert CKA | expert cosine | displacement cosine | wall time (min) |",
            "|---|---|---|---|---|---|---|---|---|---|"] if finals else [
            "No final runs yet: the test split has not been read."]
    for label, rs in finals.items():
        col = lambda key: [r.get(key) for r in rs]  # noqa: E731
        lrs = ", ".join(f"{lr:g}" for lr in sorted(set(col("lr"))))
        out.append(f"| {label} | {', '.join(str(s) for s in sorted(col('seed')))} | {lrs} | "
                   f"{_mean(col('best_updates'), 0)} | {fmt(col('valid'), 1)} | "
                   f"{fmt(col('test'), 1)} | {fmt(col('cka'), 3)} | {fmt(col('cos'), 3)} | "
                   f"{fmt(col('delta'), 3)} | {_mean(col('wall_s'), 0, 60.0)} |")
    for against, held in {base: candidates, **other_bars}.items():
        out += _bar_section(records, against, list(held), metric)
    out += _early_section(records, metric)
    selection = _groups(find(records, stage="select"))
    if selection:
        grid = sorted({r["lr"] for rs in selection.values() for r in rs})
        out += ["", f"Learning-rate selection (seed 1, valid {metric}; the best of each row "
                "in bold, and the expert cosine there; —: not run, yet or at all, as the "
                "configurations that take their base's rate search no grid):", "",
                "| configuration | " + " | ".join(f"lr {lr:g}" for lr in grid)
                + " | expert cosine |", "|---|" + "---|" * (len(grid) + 1)]
        for label, rs in selection.items():
            by_lr = {r["lr"]: r for r in rs}
            best = max(sorted(by_lr), key=lambda lr: by_lr[lr]["valid"])
            cells = ["—" if lr not in by_lr else f"**{by_lr[lr]['valid']:.1f}**" if lr == best
                     else f"{by_lr[lr]['valid']:.1f}" for lr in grid]
            cos = by_lr[best]["cos"]
            cells.append("—" if cos is None else f"{cos:.3f}")
            out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def _names(names: Iterable[str]) -> str:
    """Configuration names in running text, each in italics (a name may hold a comma)."""
    return ", ".join(f"*{name}*" for name in names)


def _summary(records: list[dict], tasks: list[str], base: str, candidates: list[str]) -> str:
    """Each candidate's verdicts over the tasks, on test and then on validation: on how many
    of those measured its accuracy is kept and its experts are apart; and the default chosen
    by the count on validation, once every candidate with final runs (the variants but the
    best have none) has it on BAR_TASKS tasks: the one that meets the bar, or else the
    closest to it (accuracy kept on the most tasks, then the experts apart on the most; the
    first candidate on a tie, the present default)."""
    test = _tally(records, tasks, base, candidates, "test")
    if not test:
        return ""
    valid = _tally(records, tasks, base, candidates, "valid")
    met, met_valid = _met(test), _met(valid)
    out = (f"\nAgainst {base} (the bar of each task's section; it is met by a configuration "
           f"whose accuracy is kept on all {BAR_TASKS} tasks and whose experts are apart on at "
           f"least {APART_TASKS}):\n\n" + _count_lines(test) + "\n\n"
           + (f"The bar is met by {_names(met)}.\n" if met else
              "No configuration measured so far meets the bar.\n")
           + "\nThe same bar on validation (the final runs' validation scores in place of their "
           "test scores; the default is chosen by it, the test split aside):\n\n"
           + _count_lines(valid) + "\n\n"
           + (f"On validation, the bar is met by {_names(met_valid)}.\n" if met_valid else
              "On validation, no configuration measured so far meets the bar.\n"))
    final = [name for name in candidates if find(records, config=name, stage="final")]
    if all(len(valid.get(name, {})) >= BAR_TASKS for name in final):
        chosen = max(valid, key=lambda name: _counts(valid[name]))  # the first on a tie
        out += (f"The default by this count (the bar met, or else accuracy kept on the most "
                f"tasks, then the experts apart on the most; the present default, named first, "
                f"on a tie): {_names([chosen])}.\n")
    return out


def _tally(records: list[dict], tasks: list[str], base: str, candidates: list[str],
           score: str) -> dict[str, dict[str, dict]]:
    """Each candidate's verdicts on that score (test or valid), by task, for those that have
    any."""
    found = {name: {t: v for t in tasks if (v := _verdicts(
        find(records, task=t), base, [name], score).get(name))} for name in candidates}
    return {name: verdicts for name, verdicts in found.items() if verdicts}


def _counts(verdicts: dict[str, dict]) -> tuple[int, int]:
    """On how many tasks the accuracy is kept, and on how many the experts are apart."""
    return (sum(v["kept"] for v in verdicts.values()),
            sum(v["apart"] for v in verdicts.values()))


def _count_lines(tally: dict[str, dict[str, dict]]) -> str:
    """A line for each candidate: the tasks where its accuracy is kept and its experts are
    apart."""
    lines = []
    for name, found in tally.items():
        kept = [t for t, v in found.items() if v["kept"]]
        apart = [t for t, v in found.items() if v["apart"]]
        lines.append(f"- {name}: accuracy kept on {len(kept)} of {len(found)} tasks measured "
                     f"({', '.join(kept) or 'none'}), experts apart on {len(apart)} "
                     f"({', '.join(apart) or 'none'}).")
    return "\n".join(lines)


def _met(tally: dict[str, dict[str, dict]]) -> list[str]:
    """The candidates that meet the bar: accuracy kept on BAR_TASKS tasks, experts apart on
    APART_TASKS."""
    return [name for name, found in tally.items()
            if (counts := _counts(found))[0] >= BAR_TASKS and counts[1] >= APART_TASKS]


def _picks(records: list[dict], tasks: list[str], base: str, apart: Iterable[str] = ()) -> str:
    """Which row to pick for which goal, on each task whose final rows have BAR_SEEDS seeds
    (the base's among them): for accuracy, the best mean test score and the rows within one
    spread of it (the larger standard deviation of the two); for diverse experts, the MoE row
    of the lowest mean expert cosine among those whose accuracy the bar keeps against the base
    (the base itself included). The rows `apart` (another model, held to a bar of its own) are
    left out; those of fewer seeds (the baselines) are named after the picks, with their test
    score and expert cosine, not held to the bar."""
    lines = []
    for task in tasks:
        groups = {label: rs for label, rs in _groups(find(records, task=task, stage="final"))
                  .items() if label not in apart}
        rows = {label: rs for label, rs in groups.items() if len(rs) >= BAR_SEEDS}
        if base not in rows or len(rows) < 2:
            continue
        fewer = [f"{_names([label])} (test {fmt([r['test'] for r in rs], 1)}, expert cosine "
                 f"{fmt([r['cos'] for r in rs], 3)})" for label, rs in groups.items()
                 if label not in rows]
        mean = lambda label, key: statistics.mean(r[key] for r in rows[label])  # noqa: E731
        best = max(rows, key=lambda label: mean(label, "test"))
        gaps = {label: _difference(rows[best], rs, "test") for label, rs in rows.items()
                if label != best}
        tied = [label for label, (gap, spread) in gaps.items() if gap >= -spread]
        kept = [label for label, rs in rows.items() if None not in (r["cos"] for r in rs)
                and (label == base or verdict(rows[base], rs)["kept"])]
        diverse = min(kept, key=lambda label: mean(label, "cos"))
        lines.append(f"- {task}: for accuracy, {_names([best])} (test "
                     f"{mean(best, 'test'):.1f}"
                     + (f"; within a spread of it: {_names(tied)}" if tied else "")
                     + f"); for diverse experts at that bar's accuracy, {_names([diverse])} "
                     f"(expert cosine {mean(diverse, 'cos'):.3f}, {_names([base])} "
                     f"{mean(base, 'cos'):.3f})."
                     + (f" Fewer seeds, not held to the bar: {'; '.join(fewer)}." if fewer
                        else ""))
    if not lines:
        return ""
    left_out = [name for name in apart if find(records, config=name, stage="final")]
    return (f"\nWhat to pick, on each task whose rows have {BAR_SEEDS} seeds"
            + (f" ({_names(left_out)} left out: another model, held to a bar of its own)"
               if left_out else "") + ":\n\n" + "\n".join(lines) + "\n")


def _controls(records: list[dict], tasks: list[str], base: str,
              controls: Mapping[str, str]) -> str:
    """Each control against the configuration it controls (controls: control: controlled), on
    each task where the three have final runs: how far the control's experts end below the
    base's in mean output cosine, as a share of how far the controlled configuration's end;
    and the displacement cosine of the three (whether the experts' updates end orthogonal)."""
    out = ""
    for control, controlled in controls.items():
        lines = []
        for task in tasks:
            rows = {label: find(records, task=task, config=label, stage="final")
                    for label in (base, controlled, control)}
            col = lambda label, key: [r[key] for r in rows[label]]  # noqa: E731
            if not all(rows.values()) or None in (c for label in rows for c in col(label, "cos")):
                continue
            drop = {label: statistics.mean(col(base, "cos")) - statistics.mean(col(label, "cos"))
                    for label in (controlled, control)}
            share = (f": {100 * drop[control] / drop[controlled]:.0f} % of the way"
                     if drop[controlled] > 0 else "")
            lines.append(
                f"- {task}: expert cosine {fmt(col(control, 'cos'), 3)}, {drop[control]:.3f} "
                f"below {_names([base])}'s {fmt(col(base, 'cos'), 3)}, where "
                f"{_names([controlled])}'s {fmt(col(controlled, 'cos'), 3)} is "
                f"{drop[controlled]:.3f} below{share}; displacement cosine "
                f"{fmt(col(control, 'delta'), 3)} ({_names([base])} {fmt(col(base, 'delta'), 3)}, "
                f"{_names([controlled])} {fmt(col(controlled, 'delta'), 3)}).")
        if lines:
            out += (f"\nThe control {_names([control])} of {_names([controlled])}, on each task "
                    f"where it has a final run: how far its experts end below {_names([base])}'s "
                    f"in output cosine, against how far those of {_names([controlled])} do:\n\n"
                    + "\n".join(lines) + "\n")
    return out


def report(records: list[dict], command: str, order: Optional[list[str]] = None,
           base: str = "MoE + AdamW", candidates: Iterable[str] = ("MoE + OMoE",),
           other_bars: Mapping[str, Iterable[str]] = MappingProxyType({}),
           controls: Mapping[str, str] = MappingProxyType({}),
           baselines: Iterable[str] = ()) -> str:
    """The whole markdown report: a header naming the command that generates it, the
    candidates' verdicts over the tasks, the picks and each control against what it controls
    (controls: control: controlled), then one section per task (those of `order` first,
    in that order), each with the bar against base, for the candidates and the baselines
    with every seed, and those of other_bars (see task_section; the header sums up the
    candidates against base alone: a baseline is no candidate for OMoE's default)."""
    tasks = list(dict.fromkeys([*(t for t in order or () if find(records, task=t)),
                                *(r["task"] for r in records)]))
    candidates = list(candidates)
    head = (f"<!-- Generated by `{command}` from its run records: do not edit by hand. -->"
            "\n\n# Converged comparison\n\n"
            "Mean ± standard deviation over seeds; updates to best, wall time: means. "
            "Expert similarity of checkpoint_best.pt on the validation split. Wall time: "
            "training and validation, two runs at a time on a 2-core machine; machines that "
            "report the same CPU ran up to about 1.5 times apart in speed, so it is a rough "
            "cost, not a speed comparison between rows.\n"
            + _summary(records, tasks, base, candidates)
            + _picks(records, tasks, base, [n for b, c in other_bars.items() for n in (b, *c)])
            + _controls(records, tasks, base, controls))
    sections = [task_section(t, find(records, task=t), base, [*candidates, *baselines],
                             other_bars) for t in tasks]
    return "\n".join([head, *sections]) if sections else head + "\nNo runs recorded yet.\n"
