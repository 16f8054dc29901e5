"""The converged comparison's plan: which runs the final stage trains, the order in which --all
works through them, shared between processes, and --plan's list of what is left (marker
options, a temporary records file; nothing trains)."""

import argparse
import fcntl
import re
import time
from pathlib import Path
from typing import Callable

import pytest

from omoe_plugin.analysis import comparison, runs
from omoe_plugin.analysis.results import (
    SelectionIncomplete, append_record, load_records, slug)


# the selection runs' expert cosine: AdamW's 0.90, OMoE's 0.80; of the variants only the longer
# steps keep half of that drop (<= 0.85)
COSINE = {"MoE + AdamW": 0.90, "MoE + OMoE": 0.80, "MoE + OMoE, delayed start": 0.89,
          "MoE + OMoE, strength ramp": 0.86, "MoE + OMoE, longer orthogonal steps": 0.82}


def planning(corpus: str, records_path: Path) -> argparse.Namespace:
    """A corpus's namespace as for_corpus sets it up, each configuration's options a marker;
    runs of at most 2 epochs of 100 updates, validated every 30, in a folder beside the
    records; its peers: it alone (all_planned: every corpus)."""
    c = argparse.Namespace(
        corpus=corpus, setting="pretrained", extra=[], seeds=[1, 2, 3], lr_grid=[1e-4, 3e-4],
        records=records_path, out=records_path.parent / "runs" / corpus,
        protocol={"max_epoch": 2, "validate_interval": 30}, per_epoch=100,
        options={name: [f"--{slug(name)}"] for name in comparison.CONFIGS},
        chosen=[n for n in comparison.CONFIGS if n not in comparison.SCALE_POINT
                or corpus == comparison.SCALE_TASK])
    c.peers = {corpus: c}
    return c


def all_planned(records_path: Path) -> list[tuple]:
    """--all's steps over every corpus, as the script makes them."""
    corpora = {t: planning(t, records_path) for t in comparison.TASKS}
    for c in corpora.values():
        c.peers = corpora
    return [(corpora[t], stage, [n for n in names if n in corpora[t].chosen])
            for t, stage, names in comparison.all_steps(list(comparison.TASKS))]


def selection(name: str, lr: float, options: list[str], task="movie_reviews") -> dict:
    """A selection record (of 200 updates, no curve recorded): 1e-4 scores best."""
    return {"task": task, "config": name, "stage": "select", "seed": 1, "lr": lr,
            "options": options, "valid": 85.0 if lr == 1e-4 else 80.0,
            "cos": COSINE.get(name, 0.5), "updates": 200}


def trained_here(c: argparse.Namespace, name: str, lr: float, seed: int = 1) -> None:
    """The run's training finished on this machine (its run.json says so)."""
    run_dir = comparison.run_dir_of(c, name, c.options[name], lr, seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    runs.save_state(run_dir, {**runs.load_state(run_dir, c.options[name]), "trained": True})


def test_the_final_runs_are_the_best_variants_and_a_baselines_first_seed_only(tmp_path):
    c = planning("movie_reviews", tmp_path / "records.jsonl")
    records = [selection(name, lr, options) for name, options in c.options.items()
               for lr in c.lr_grid if lr == 1e-4 or name not in comparison.RATE_FROM]
    names = list(comparison.CONFIGS)
    rates, seeds = comparison.final_plan(c, records, names)
    assert rates == {name: 1e-4 for name in names}
    longer = "MoE + OMoE, longer orthogonal steps"
    assert seeds == {name: [] if name in comparison.VARIANTS and name != longer else [1] if name in
                     comparison.ONE_SEED else [1, 2, 3] for name in names}
    # a variant alone still needs the others' selection to know whether it is the best
    delayed = comparison.VARIANTS[0]
    assert comparison.final_plan(c, records, [delayed])[1] == {delayed: []}
    with pytest.raises(SelectionIncomplete, match=re.escape(repr(longer))):
        comparison.final_plan(c, [r for r in records if r["config"] != longer], [delayed])


def test_one_best_variant_is_chosen_over_every_corpus_for_all_of_them(tmp_path):
    movies, conll = (planning(t, tmp_path / "records.jsonl") for t in ("movie_reviews",
                                                                      "conll2003"))
    movies.peers = conll.peers = {"movie_reviews": movies, "conll2003": conll}
    records = [selection(name, lr, options, c.corpus) for c in (movies, conll)
               for name, options in c.options.items()
               for lr in c.lr_grid if lr == 1e-4 or name not in comparison.RATE_FROM]
    ramp, longer = "MoE + OMoE, strength ramp", "MoE + OMoE, longer orthogonal steps"
    # alone, each corpus would pay for the longer steps (see the test above); on CoNLL the
    # ramp keeps the diversity instead, and scores a point above the default there
    for r in records:
        if r["task"] == "conll2003" and r["config"] in (ramp, longer):
            r.update(cos=0.82 if r["config"] == ramp else 0.89,
                     valid=86.0 if r["config"] == ramp else 85.0)
    for c in (movies, conll):
        seeds = comparison.final_plan(c, records, comparison.VARIANTS)[1]
        assert seeds == {name: [1, 2, 3] if name == ramp else [] for name in seeds}
    # a variant's final runs on the movies wait for CoNLL's selection too
    with pytest.raises(SelectionIncomplete, match=re.escape(f"{ramp!r} on conll2003")):
        comparison.final_plan(movies, [r for r in records if r["task"] != "conll2003"
                                       or r["config"] != ramp], [longer])


def test_runs_that_wait_for_the_same_selections_are_named_together_and_those_once(tmp_path):
    movies, conll = (planning(t, tmp_path / "records.jsonl") for t in ("movie_reviews",
                                                                      "conll2003"))
    movies.peers = conll.peers = {"movie_reviews": movies, "conll2003": conll}
    ramp = "MoE + OMoE, strength ramp"
    records = [selection(name, lr, options, c.corpus) for c in (movies, conll)
               for name, options in c.options.items()
               for lr in c.lr_grid if (lr == 1e-4 or name not in comparison.RATE_FROM)
               and (c.corpus, name) != ("conll2003", ramp)]
    waits = [w for c in (movies, conll)
             for w in comparison.planned(c, records, "final", list(c.options))[1]]
    assert len(waits) == 2 * len(comparison.VARIANTS)  # every variant, on both corpora
    [reason] = comparison.waiting_for(waits)
    head, *missing = reason.split("\n  ")
    assert head == "the final runs of " + "; ".join(
        f"{v} on {t}" for t in ("movie_reviews", "conll2003") for v in comparison.VARIANTS
    ) + " wait for:"
    assert len(missing) == 1 and missing[0].startswith(f"{ramp!r} on conll2003: no selection")


def test_all_trains_adamw_and_omoe_on_every_corpus_first_and_shares_the_runs(tmp_path):
    records_path = tmp_path / "records.jsonl"
    steps = all_planned(records_path)
    trained, held = [], {("conll2003", "MoE + OMoE", "select", 3e-4, 1)}

    def run(c, name, options, lr, seed, stage):  # records what a finished run would
        key = (c.corpus, name, stage, lr, seed)
        if key in held:
            return "held"
        if key in trained:
            return "recorded"
        trained.append(key)
        record = {**selection(name, lr, options, c.corpus), "stage": stage, "seed": seed}
        append_record(records_path, record)
        return "trained"

    remaining = comparison.work(steps, wait=False, train=run)
    # AdamW's and OMoE's selection on every corpus, then their final runs, then the rest
    assert {k[0] for k in trained[:11]} == set(comparison.TASKS) and all(
        k[1] in comparison.CORE and k[2] == "select" for k in trained[:10])
    assert trained[11][1] in comparison.CORE and trained[11][2] == "final"
    # last, the orthogonality loss (its selection, at AdamW's rate, then its three seeds) on
    # every corpus; before it the early runs of the final runs of seed 1 recorded (without
    # their curve), and before those the scale point
    last = [(t, name, stage, 1e-4, seed) for stage, seeds in (("select", [1]),
                                                              ("final", [1, 2, 3]))
            for t in comparison.TASKS for name in comparison.LAST for seed in seeds]
    assert trained[-len(last):] == last
    early = [(t, name, "early", 1e-4, 1) for t in comparison.TASKS for name in comparison.CORE]
    assert trained[-len(last) - 5:-len(last)] == [
        k for k in early if k[:2] != ("conll2003", "MoE + OMoE")]
    assert trained[-len(last) - 6] == ("movie_reviews", "MoE 8x top-2 + OMoE", "final", 1e-4, 3)
    # the held run: remaining, with what waits for it (OMoE's final runs on CoNLL, and the
    # variants everywhere: they are chosen over every corpus), and no more
    assert remaining[0] == ("select MoE + OMoE on conll2003, lr 0.0003 seed 1: another process "
                            "is running it")
    assert [r for r in remaining if r.startswith("the final runs of ") and "MoE + OMoE on "
            "conll2003" in r.split(" wait for:")[0][len("the final runs of "):].split("; ")]
    waiting = {"MoE + OMoE", *comparison.VARIANTS}
    assert not [k for k in trained if k[2] == "final" and k[1] in waiting and (
        k[0] == "conll2003" or k[1] in comparison.VARIANTS)]
    # what does not wait for it trains meanwhile: AdamW's final runs on CoNLL among them
    assert [k[4] for k in trained if k[:3] == ("conll2003", "MoE + AdamW", "final")] == [1, 2, 3]
    held.clear()
    assert comparison.work(steps, wait=False, train=run) == []  # released: the rest trains
    assert trained[-1] == ("conll2003", "MoE + OMoE", "early", 1e-4, 1)
    finals = [k for k in trained if k[2] == "final"]
    for t in comparison.TASKS:
        best = [k for k in finals if k[0] == t and k[1] in comparison.VARIANTS]
        assert {k[1] for k in best} == {"MoE + OMoE, longer orthogonal steps"}
        assert [k[4] for k in finals if k[0] == t and k[1] in comparison.ONE_SEED] == [1, 1]
        assert [k[4] for k in finals if k[0] == t and k[1] in comparison.LAST] == [1, 2, 3]
    assert not [k for k in trained if k[1] in comparison.SCALE_POINT and k[0] != "movie_reviews"]


def test_all_trains_the_variants_before_dense_and_the_baselines(tmp_path):
    records_path = tmp_path / "records.jsonl"
    order = []
    comparison.work(all_planned(records_path), wait=False, train=recording(records_path, order))
    core, variants, scale = comparison.CORE, comparison.VARIANTS, comparison.SCALE_POINT
    last = comparison.LAST
    rest = [name for name in comparison.CONFIGS if name not in [*core, *variants, *scale, *last]]
    # AdamW and OMoE; the variants (the best one's final runs wait for all their selections);
    # dense, Drop-Upcycling and the control; the scale point; AdamW's and OMoE's early runs;
    # the orthogonality loss
    groups = [core, variants, rest, scale, "early", last]
    rank = [groups.index("early") if k[2] == "early" else
            next(i for i, names in enumerate(groups) if k[1] in names) for k in order]
    assert rank == sorted(rank) and set(rank) == set(range(len(groups)))
    tasks = len(comparison.TASKS)
    assert [k[2] for k in order if k[1] in variants] == (["select"] * tasks * len(variants)
                                                         + ["final"] * tasks * 3)


def test_early_runs_train_again_the_first_epochs_of_a_final_run_recorded_without_a_curve(
        tmp_path):
    records_path = tmp_path / "records.jsonl"
    movies = planning("movie_reviews", records_path)
    # AdamW's final runs recorded without their curve, OMoE's with it; 20 min for 200 updates
    for name, curve in (("MoE + AdamW", {}), ("MoE + OMoE", {"curve": [[30, 70.0]]})):
        for seed in (1, 2):
            append_record(records_path, {**selection(name, 1e-4, movies.options[name]),
                                         "stage": "final", "seed": seed, "wall_s": 1200.0,
                                         **curve})
    step = [(movies, "early", comparison.CORE)]
    # seed 1 of AdamW only, to the first validation (every 30 updates) after 2 epochs of 100,
    # in a run directory of its own, under the same options but --max-update
    assert comparison.plan(step).splitlines()[1:] == [
        "  1. movie_reviews early MoE + AdamW, lr 0.0001, seed 1: not started (about 21 min)",
        "1 to train: about 0.3 h of training, 0.2 h at two at a time."]
    calls = []

    def run(c, name, options, lr, seed, stage):
        calls.append((name, options, lr, seed, stage))
        append_record(records_path, {**selection(name, lr, options), "stage": stage})
        return "trained"

    assert comparison.work(step, wait=False, train=run) == []
    options = [*movies.options["MoE + AdamW"], "--max-update", "210"]
    assert calls == [("MoE + AdamW", options, 1e-4, 1, "early")]
    assert comparison.work(step, wait=False, train=run) == [] and len(calls) == 1
    assert comparison.progress(movies, "MoE + AdamW", 1e-4, 1, "early")[1] == 210
    assert (comparison.run_dir_of(movies, "MoE + AdamW", options, 1e-4, 1)
            != comparison.run_dir_of(movies, "MoE + AdamW", movies.options["MoE + AdamW"],
                                     1e-4, 1))
    # the corpora's own: each early run ends at the validation its final runs' curves hold
    stops = {(67, 265): 536, (110, 439): 880, (66, 264): 528}
    for (every, per_epoch), stop in stops.items():
        c = argparse.Namespace(protocol={"validate_interval": every}, per_epoch=per_epoch)
        assert comparison.early_updates(c) == stop


def recording(records_path: Path, order: list[tuple],
              wall_s: Callable[[str], float] = lambda corpus: 1.0) -> Callable[..., str]:
    """A stand-in for comparison.run: records what a finished run would (in no time; its wall
    time: wall_s of its corpus), unless the run has its record or another process holds it,
    and lists the runs it trained in order."""
    def run(c, name, options, lr, seed, stage):
        key = (c.corpus, name, stage, lr, seed)
        if key in [(r["task"], r["config"], r["stage"], r["lr"], r["seed"])
                   for r in load_records(records_path)]:
            return "recorded"
        if comparison.progress(c, name, lr, seed, stage)[2]:
            return "held"
        order.append(key)
        append_record(records_path, {**selection(name, lr, options, c.corpus), "stage": stage,
                                     "seed": seed, "wall_s": wall_s(c.corpus)})
        return "trained"
    return run


def test_all_scores_a_run_trained_here_before_training_another(tmp_path):
    records_path = tmp_path / "records.jsonl"
    steps = all_planned(records_path)
    movies = steps[0][0]
    for name in comparison.CORE:
        for lr in movies.lr_grid:
            append_record(records_path, selection(name, lr, movies.options[name]))
    trained_here(movies, "MoE + OMoE", 1e-4)
    order = []
    comparison.work(steps, wait=False, train=recording(records_path, order))
    # OMoE's final run of seed 1 on the movies scores its selection run (trained here) first;
    # then --all's order: AdamW's and OMoE's selection on CoNLL
    assert order[:2] == [("movie_reviews", "MoE + OMoE", "final", 1e-4, 1),
                         ("conll2003", "MoE + AdamW", "select", 1e-4, 1)]


def test_until_passes_over_the_runs_not_likely_to_finish_by_then(tmp_path, monkeypatch):
    records_path = tmp_path / "records.jsonl"
    steps = all_planned(records_path)
    movies, conll = steps[0][0], steps[1][0]
    # the movies' runs take 20 min, CoNLL's 100; privacy_qa has no record to estimate from
    for name in comparison.CORE:
        for lr in movies.lr_grid:
            append_record(records_path, {**selection(name, lr, movies.options[name]),
                                         "wall_s": 1200.0})
    append_record(records_path, {**selection("MoE + AdamW", 1e-4, conll.options["MoE + AdamW"],
                                             "conll2003"), "wall_s": 6000.0})
    order = []
    run = recording(records_path, order)
    monkeypatch.setattr(comparison.time, "sleep", lambda s: pytest.fail("waited for nothing"))
    # half an hour left: CoNLL's and privacy_qa's runs are passed over for the movies' later
    # ones, and once only those remain, --all ends (with wait: no other process holds one)
    remaining = comparison.work(steps, wait=True, train=run, until=time.time() + 1800)
    assert order and {k[0] for k in order} == {"movie_reviews"}
    assert order[0] == ("movie_reviews", "MoE + AdamW", "final", 1e-4, 1)
    assert ("select MoE + AdamW on conll2003, lr 0.0003 seed 1: not likely to finish by "
            "--until (about 100 min)") in remaining
    assert ("select MoE + AdamW on privacy_qa, lr 0.0001 seed 1: not likely to finish by "
            "--until (no record of its corpus to estimate from)") in remaining
    assert not [r for r in remaining if r.startswith("select MoE + AdamW on conll2003, lr 0.0001")]
    # a run another process holds is not passed over: it is held
    held = comparison.run_dir_of(conll, "MoE + AdamW", conll.options["MoE + AdamW"], 3e-4, 1)
    held.mkdir(parents=True)
    with open(held / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        remaining = comparison.work(steps, wait=False, train=run, until=time.time() + 1800)
    assert remaining[0] == ("select MoE + AdamW on conll2003, lr 0.0003 seed 1: another process "
                            "is running it")
    assert not [r for r in remaining if r.startswith("select MoE + AdamW on conll2003, lr 0.0003")
                and "--until" in r]
    # past the time: nothing trains but a run whose training finished here, and --all ends
    trained_here(conll, "MoE + AdamW", 3e-4)
    order.clear()
    comparison.work(steps, wait=True, train=run, until=time.time() - 1)
    assert order == [("conll2003", "MoE + AdamW", "select", 3e-4, 1)]


def test_until_with_fill_trains_the_runs_passed_over_last(tmp_path, monkeypatch):
    monkeypatch.setattr(comparison.time, "sleep", lambda s: pytest.fail("waited for nothing"))
    until, orders, remaining = time.time() + 1800, [], []
    # the movies' runs take 20 min, the others' 100
    wall_s = lambda corpus: 1200.0 if corpus == "movie_reviews" else 6000.0  # noqa: E731
    for fill in (False, True):
        records_path = tmp_path / f"fill_{fill}" / "records.jsonl"
        steps = all_planned(records_path)
        for c in (steps[0][0], steps[1][0]):
            append_record(records_path, {**selection("MoE + AdamW", 1e-4, c.options[
                "MoE + AdamW"], c.corpus), "wall_s": wall_s(c.corpus)})
        orders.append([])
        run = recording(records_path, orders[-1], wall_s)
        remaining.append(comparison.work(steps, wait=True, train=run, until=until, fill=fill))
    fits, filled = orders
    # without fill: the runs that fit (the movies'), and the others passed over; with it, the
    # same runs first, then those passed over, in --all's order, until none is left
    assert fits and {k[0] for k in fits} == {"movie_reviews"}
    assert ("select MoE + AdamW on conll2003, lr 0.0003 seed 1: not likely to finish by "
            "--until (about 100 min)") in remaining[0]
    assert remaining[1] == []
    assert filled[:len(fits)] == fits
    assert filled[len(fits)] == ("conll2003", "MoE + AdamW", "select", 3e-4, 1)
    assert len(filled) == len(set(filled)) > len(fits)


def test_plan_lists_what_all_has_left_in_its_order_trains_nothing_and_estimates_it(tmp_path):
    records_path = tmp_path / "records.jsonl"
    steps = all_planned(records_path)
    # AdamW's selection complete on every corpus, OMoE's on CoNLL and begun on the movies; 20
    # min a run
    movies, conll = steps[0][0], steps[1][0]
    for c, name, lr in [*((c, "MoE + AdamW", lr) for c, _, _ in steps[:3] for lr in c.lr_grid),
                        *((conll, "MoE + OMoE", lr) for lr in conll.lr_grid),
                        (movies, "MoE + OMoE", 1e-4)]:
        append_record(records_path, {**selection(name, lr, c.options[name], c.corpus),
                                     "wall_s": 1200.0})
    # the selection runs whose final run of seed 1 is planned trained here, but for AdamW's on
    # privacy_qa: that one trained on another machine
    for c, name in [(movies, "MoE + AdamW"), (conll, "MoE + AdamW"), (conll, "MoE + OMoE")]:
        trained_here(c, name, 1e-4)
    before = records_path.read_text()
    started = comparison.run_dir_of(movies, "MoE + OMoE", movies.options["MoE + OMoE"], 3e-4, 1)
    started.mkdir(parents=True)
    (started / "train.log").write_text("| train_inner | epoch 001: num_updates=40\n"
                                       "| valid | epoch 001 | num_updates 50 | best 80\n")
    folders = sorted((tmp_path / "runs").rglob("*"))
    with open(started / "lock", "w") as lock:  # a process trains it
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        running = comparison.plan(steps).splitlines()
    lines = comparison.plan(steps).splitlines()
    # first the runs whose training finished here: the final runs of seed 1 score them
    assert lines[1:4] == [f"{i:3}. {task} final {name}, lr 0.0001, seed 1: scores its selection "
                          "run on test" for i, task, name in [
                              (1, "movie_reviews", "MoE + AdamW"), (2, "conll2003", "MoE + AdamW"),
                              (3, "conll2003", "MoE + OMoE")]]
    assert running[4] == ("  4. movie_reviews select MoE + OMoE, lr 0.0003, seed 1: running, "
                          "update 50 of at most 200 (about 15 min)")
    assert lines[4] == ("  4. movie_reviews select MoE + OMoE, lr 0.0003, seed 1: started, "
                        "update 50 of at most 200 (about 15 min)")
    assert running[5:] == lines[5:] and running[:4] == lines[:4]
    assert lines[5] == ("  5. privacy_qa select MoE + OMoE, lr 0.0001, seed 1: not started "
                        "(about 20 min)")
    # every run --all would train, in its order: OMoE's 3 selection runs left, the final runs
    # of AdamW and OMoE (seeds 2 and 3; seed 1 scores its selection run, but for AdamW's on
    # privacy_qa, and OMoE's on the movies if it takes the rate of the selection run recorded
    # from another machine, as it does when the others score the placeholders' 0: trained
    # again), dense's, the variants', the control's and the baselines' selection, dense's and
    # the best variant's final runs, the scale point's two selection runs and four final runs,
    # the orthogonality loss's seeds 2 and 3
    left = lines[1:-1]
    assert len(left) == 3 + 3 * 2 * 3 + 3 * (2 + 3 + 3) + 3 * (3 + 3 + 3) + 2 + 2 * 3 + 3 * 2
    assert len([r for r in left if r.endswith("scores its selection run on test")]) == 3 * 7
    again = "its selection run's checkpoint is not here: trains it again (about 20 min)"
    assert [r[5:] for r in left if again in r] == [
        f"movie_reviews final MoE + OMoE, its chosen rate, seed 1: {again}",
        f"privacy_qa final MoE + AdamW, lr 0.0001, seed 1: {again}"]
    trains = 3 + 12 + 24 + 12 + 6 + 2 + 6
    hours = (15 + (trains - 1) * 20) / 60
    assert lines[-1] == (f"{trains} to train: about {hours:.1f} h of training, "
                         f"{hours / 2:.1f} h at two at a time.")
    # CoNLL's selections are complete: its final runs have their rates; so have AdamW's on the
    # movies; OMoE's there wait, and so does the choice of the variant whose final runs are
    # trained
    text = "\n".join(lines)
    assert "conll2003 final MoE + OMoE, lr 0.0001, seed 2: not started (about 20 min)" in text
    assert "movie_reviews final MoE + AdamW, lr 0.0001, seed 2: not started (about 20 min)" in text
    assert ("movie_reviews final MoE + OMoE, its chosen rate, seed 2: waits for a selection "
            "(about 20 min)") in text
    assert "conll2003 final the best variant, its chosen rate, seed 3: waits" in text
    assert records_path.read_text() == before  # nothing trained, nothing recorded
    assert sorted(p for p in (tmp_path / "runs").rglob("*") if p.is_dir()) == [
        p for p in folders if p.is_dir()]
    # with no record at all (9 more selection runs: those recorded above, and two final runs
    # fewer: nothing has trained elsewhere) there is nothing to estimate from
    fresh = all_planned(tmp_path / "none.jsonl")
    assert comparison.plan(fresh).splitlines()[-1] == (
        f"{trains + 7} to train, {trains + 7} with no record of their corpus yet to estimate "
        "from.")
