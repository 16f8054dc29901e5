"""The converged comparison's records, learning-rate selection and report (pure functions,
on a temporary records file)."""

import json

import pytest

from omoe_plugin.analysis.results import (
    SelectionIncomplete, append_record, best_variant, chosen_lr, find, fmt, load_records,
    record_key, report, selection_grid, slug, verdict)

OPTIONS = ["--arch", "omoe_roberta_minilm", "--finetune-from-model", "data-bin/minilm/moe4.pt"]
PROTOCOL = {"patience": 8, "max_epoch": 12, "validate_interval": 67, "updates_per_epoch": 265}


def record(config="MoE + OMoE", stage="select", seed=1, lr=1e-4, valid=80.0, **fields):
    r = {"task": "movie_reviews", "setting": "pretrained", "config": config,
         "options": OPTIONS, "extra": [], "stage": stage, "seed": seed, "lr": lr,
         "metric": "accuracy", "best_updates": 500, "updates": 1000, "epochs": 3.77,
         "valid": valid, "test": None if stage == "select" else valid + 1, "cka": 0.99,
         "cos": 0.9, "delta": 0.1, "room": 0.02, "wall_s": 3000.0, "protocol": PROTOCOL,
         "commit": "fe46094", "cpu": "AMD EPYC"}
    r.update(fields)
    return r


def test_records_append_one_line_each_and_read_back_in_order(tmp_path):
    path = tmp_path / "results" / "convergence.jsonl"
    assert load_records(path) == []
    first, second = record(lr=3e-5), record(lr=1e-4)
    append_record(path, first)
    append_record(path, second)
    assert [json.loads(line) for line in path.read_text().splitlines()] == [first, second]
    assert load_records(path) == [first, second]


def test_a_record_is_keyed_on_task_config_stage_seed_lr_and_options():
    base = record()
    assert record_key(base) == record_key(record(valid=50.0, wall_s=1.0))  # results aside
    for change in ({"task": "conll2003"}, {"config": "MoE + AdamW"}, {"stage": "final"},
                   {"seed": 2}, {"lr": 3e-4}, {"options": [*OPTIONS, "--omoe-alpha", "1"]}):
        assert record_key(base) != record_key({**base, **change}), change


def test_the_best_validation_rate_is_chosen_the_smaller_on_a_tie():
    grid = [3e-5, 1e-4, 3e-4]
    records = [record(lr=3e-5, valid=80.0), record(lr=1e-4, valid=82.5),
               record(lr=3e-4, valid=81.0),
               record(lr=3e-4, valid=99.0, seed=2),  # not a selection run: seed 2,
               record(lr=3e-4, valid=99.0, stage="final"),  # a final run,
               record(lr=3e-4, valid=99.0, options=["--other"]),  # other options,
               record(lr=3e-4, valid=99.0, config="MoE + AdamW")]  # another configuration
    assert chosen_lr(records, "movie_reviews", "MoE + OMoE", OPTIONS, grid) == 1e-4
    tie = [record(lr=lr, valid=82.5) for lr in (3e-4, 1e-4, 3e-5)]
    assert chosen_lr(tie, "movie_reviews", "MoE + OMoE", OPTIONS, grid) == 3e-5


def test_the_final_runs_are_refused_while_the_selection_is_incomplete():
    records = [record(lr=1e-4), record(lr=3e-4, options=["--other"])]
    with pytest.raises(SelectionIncomplete) as refused:
        chosen_lr(records, "movie_reviews", "MoE + OMoE", OPTIONS, [3e-5, 1e-4, 3e-4])
    message = str(refused.value)
    assert "'MoE + OMoE' on movie_reviews" in message
    assert "no selection run yet at lr 3e-05, 0.0003" in message and "--select" in message


def test_a_variant_takes_the_rate_its_base_chose_once_the_base_has_chosen():
    grid = [3e-5, 1e-4, 3e-4]
    base = ("MoE + OMoE", OPTIONS)
    assert selection_grid([], "movie_reviews", grid) == grid  # no base: the whole grid
    chosen = [record(lr=lr, valid=v) for lr, v in ((3e-5, 80.0), (1e-4, 79.0), (3e-4, 82.0))]
    assert selection_grid(chosen, "movie_reviews", grid, base) == [3e-4]
    with pytest.raises(SelectionIncomplete, match="'MoE \\+ OMoE' on movie_reviews"):
        selection_grid(chosen[:2], "movie_reviews", grid, base)
    # the variant's own selection run at that rate is what its final runs need
    variant = [*chosen, record(config="MoE + OMoE, delayed start", lr=3e-4)]
    rates = selection_grid(variant, "movie_reviews", grid, base)
    assert chosen_lr(variant, "movie_reviews", "MoE + OMoE, delayed start", OPTIONS,
                     rates) == 3e-4
    with pytest.raises(SelectionIncomplete, match="no selection run yet at lr 0.0003"):
        chosen_lr(chosen, "movie_reviews", "MoE + OMoE, delayed start", OPTIONS, rates)


def test_find_and_the_helpers():
    records = [record(), record(stage="final", seed=2)]
    assert find(records, stage="final", seed=2) == records[1:]
    assert slug("MoE + OMoE") == "moe_omoe" and slug("dense fine-tune") == "dense_fine_tune"
    assert fmt([1.0, 3.0], 1) == "2.0 ± 1.4" and fmt([2.0], 2) == "2.00"
    assert fmt([None, 1.0], 1) == "—" and fmt([], 1) == "—"


def test_the_report_is_made_from_the_records_alone():
    records = [
        record(config="dense fine-tune", lr=1e-4, valid=81.0, cka=None, cos=None, delta=None),
        *(record(lr=lr, valid=v) for lr, v in ((3e-5, 80.0), (1e-4, 83.0), (3e-4, 82.0))),
        *(record(stage="final", seed=s, valid=v, best_updates=u, wall_s=w)
          for s, v, u, w in ((1, 83.0, 400, 3000.0), (2, 81.0, 600, 3600.0))),
        record(config="dense fine-tune", stage="final", cka=None, cos=None, delta=None,
               majority={"valid": 50.8, "test": 50.57}),
        record(task="conll2003", metric="entity_f1", stage="final", valid=88.0),
    ]
    text = report(records, "python scripts/compare_optimizers.py --report",
                  order=["conll2003", "movie_reviews"])
    assert text.startswith("<!-- Generated by `python scripts/compare_optimizers.py --report`")
    assert text.index("## conll2003") < text.index("## movie_reviews")  # in the given order
    section = text[text.index("## movie_reviews"):]
    assert ("Protocol: patience 8 validations, at most 12 epochs of 265 updates, validation "
            "every 67 updates.") in section
    assert ("Run by `python scripts/compare_optimizers.py --corpus movie_reviews --select`, "
            "then the same without `--select` (with the fairseq options a row names), on AMD "
            "EPYC, code at fe46094. Always answering the majority class scores 50.8 on "
            "validation and 50.6 on test.") in section
    assert "majority" not in text[:text.index("## movie_reviews")]  # none recorded there
    assert "| configuration | seeds | lr | updates to best | valid acc | test acc |" in section
    # two seeds: mean ± standard deviation, means of updates to best and of wall time
    assert ("| MoE + OMoE | 1, 2 | 0.0001 | 500 | 82.0 ± 1.4 | 83.0 ± 1.4 | 0.990 ± 0.000 | "
            "0.900 ± 0.000 | 0.100 ± 0.000 | 55 |") in section
    dense = "| dense fine-tune | 1 | 0.0001 | 500 | 80.0 | 81.0 | — | — | — |"
    assert dense + " 50 |" in section
    # the selection: every rate tried, the chosen one in bold, a rate not tried a dash
    assert "| configuration | lr 3e-05 | lr 0.0001 | lr 0.0003 |" in section
    assert "| MoE + OMoE | 80.0 | **83.0** | 82.0 |" in section
    assert "| dense fine-tune | — | **81.0** | — |" in section
    assert "valid entity f1" in text[:text.index("## movie_reviews")]


def test_early_learning_reads_the_curves_of_the_rows_that_hold_them():
    # 265 updates an epoch: read at the first validation after 66, 132, 265 and 530 updates;
    # seed 2 stopped before 530 (with a patience shorter than any the protocol sets)
    curves = {1: [[67, 60.0], [134, 70.0], [201, 76.0], [265, 80.0], [532, 83.0]],
              2: [[60, 55.0], [67, 64.0], [130, 72.0], [268, 78.0], [300, 81.0]]}
    records = [*(record(stage="final", seed=s, valid=v, curve=curves[s])
                 for s, v in ((1, 83.0), (2, 81.0))),
               record(config="MoE + AdamW", stage="final", valid=84.0)]  # no curve recorded
    section = report(records, "compare")
    assert ("Early learning (valid acc at the first validation after, mean over seeds; the "
            "rows whose records hold their validation curve, and, marked †, those recorded "
            "without it: the first 2 epochs of their final run of seed 1 trained again, and "
            "that run's best):") in section
    assert ("| configuration | seeds | 0.25 epoch (66 updates) | 0.5 epoch (132 updates) | "
            "1 epoch (265 updates) | 2 epochs (530 updates) | best |") in section
    # after 66: 67 for both; after 132: 134 and 268; after 265: 265 and 268; none after 530
    # for seed 2, so no mean
    assert "| MoE + OMoE | 1, 2 | 62.0 | 74.0 | 79.0 | — | 82.0 ± 1.4 |" in section
    assert "| MoE + AdamW | 1 |" not in section.split("Early learning")[1]
    assert "Early learning" not in report(records[2:], "compare")


def test_early_learning_takes_a_row_recorded_without_its_curve_from_its_early_run():
    cap = PROTOCOL["max_epoch"] * PROTOCOL["updates_per_epoch"]
    # AdamW's final runs recorded without their curve (seed 1 reaching the epoch cap), and the
    # first 2 epochs of seed 1 trained again (to the first validation after 530 updates)
    finals = [record(config="MoE + AdamW", stage="final", seed=s, valid=v, updates=cap)
              for s, v in ((1, 84.0), (2, 82.0))]
    early = record(config="MoE + AdamW", stage="early", valid=81.0, updates=536,
                   options=[*OPTIONS, "--max-update", "536"],
                   curve=[[67, 61.0], [134, 71.0], [268, 77.0], [536, 81.0]])
    section = report([*finals, early], "compare").split("## movie_reviews")[1]
    # its cells from the early run, its best from the final run of the same seed
    assert "| MoE + AdamW † | 1 | 61.0 | 71.0 | 77.0 | 81.0 | 84.0 |" in section
    # the early run is no row of the final runs' table, and no run the epoch cap ended
    assert "| MoE + AdamW | 1, 2 |" in section
    assert "The epoch cap, not patience, ended 2 of its 2 runs" in section
    assert "Early learning" not in report(finals, "compare")


def test_the_report_says_how_many_runs_the_epoch_cap_ended_and_how_far_from_a_plateau():
    cap = PROTOCOL["max_epoch"] * PROTOCOL["updates_per_epoch"]
    epoch = PROTOCOL["updates_per_epoch"]
    records = [record(stage="final", updates=cap), record(stage="final", seed=2)]
    assert ("The epoch cap, not patience, ended 1 of its 2 runs: their validation had improved "
            "within the patience's last validations.") in report(records, "compare")
    assert "epoch cap" not in report(records[1:], "compare")
    # with their curves: the best rose over the last epoch by 1.0 (80.0 up to cap - epoch,
    # 81.0 after) and by 0.4 (84.0 up to cap - epoch: the best before it, not the 83.0 there)
    curves = ([[epoch, 70.0], [cap - epoch, 80.0], [cap - 1, 81.0], [cap, 80.5]],
              [[cap - epoch - 1, 84.0], [cap - epoch, 83.0], [cap, 84.4]])
    records = [record(stage="final", seed=s, updates=cap, curve=c)
               for s, c in enumerate(curves, 1)] + [record(stage="final", seed=3, updates=cap)]
    assert ("The epoch cap, not patience, ended 3 of its 3 runs: their validation had improved "
            "within the patience's last validations; the best valid acc of the 2 whose records "
            "hold their curve rose by 0.7 on average over their last epoch (0.4 to 1.0).") \
        in report(records, "compare")


def test_rows_with_extra_options_or_another_protocol_are_kept_apart():
    other = {**PROTOCOL, "patience": 4}
    records = [record(stage="final"), record(stage="final", extra=["--omoe-alpha", "0.1"],
                                             options=[*OPTIONS, "--omoe-alpha", "0.1"]),
               record(stage="final", options=[*OPTIONS, "--patience", "4"], protocol=other)]
    text = report(records, "cmd")
    assert "| MoE + OMoE | 1 |" in text and "| MoE + OMoE, `--omoe-alpha 0.1` | 1 |" in text
    assert "| MoE + OMoE [2] | 1 |" in text
    assert "patience 4 validations" in text and "patience 8 validations" in text
    grouped = report([record(stage="final", protocol={**PROTOCOL, "group_by_length": True})],
                     "cmd")
    assert "validation every 67 updates, batches grouped by length." in grouped
    assert "grouped" not in text  # random batches (records without the key too)
    assert report([], "cmd").endswith("No runs recorded yet.\n")


def test_the_best_variant_moves_the_experts_apart_or_keeps_the_diversity_then_scores_best():
    adamw, default = ("MoE + AdamW", OPTIONS, 1e-4), ("MoE + OMoE", OPTIONS, 1e-4)
    variants = {name: (OPTIONS, 1e-4) for name in ("ramp", "delay", "longer")}
    # AdamW's cosine 0.90 and the default's 0.86: a variant moves the experts apart at <= 0.85
    # (the bar's 0.05), keeps half the default's drop at <= 0.88
    base = [record(config="MoE + AdamW", cos=0.90, valid=86.0),
            record(config="MoE + OMoE", cos=0.86, valid=84.0)]
    runs = [record(config="ramp", cos=0.87, valid=84.5),
            record(config="delay", cos=0.89, valid=85.9),
            record(config="longer", cos=0.84, valid=84.2)]

    def pick(records):
        return best_variant(records, {"movie_reviews": (variants, adamw, default)})

    assert pick(base + runs) == "longer"  # the others score higher, but do not move them apart
    runs[2]["cos"] = 0.851  # now none does: of the two that keep the diversity, the better
    assert pick(base + runs) == "ramp"  # (delay scores higher but gives up the diversity)
    runs[0]["cos"] = 0.881  # now only `longer` keeps it
    assert pick(base + runs) == "longer"
    for r in runs:  # none keeps it: the best validation score of all
        r["cos"] = 0.89
    assert pick(base + runs) == "delay"
    runs[2]["valid"] = runs[1]["valid"] = 85.9  # a tie: the first given
    assert pick(base + runs) == "delay"
    others = [record(config="ramp", cos=0.5, valid=99.0, lr=3e-4),  # another rate,
              record(config="ramp", cos=0.5, valid=99.0, stage="final")]  # not a selection
    assert pick(base + runs + others) == "delay"
    with pytest.raises(SelectionIncomplete, match="'longer' on movie_reviews"):
        pick(base + runs[:2])


def test_the_best_variant_is_one_for_every_task_apart_on_two_tasks_first():
    adamw, default = ("MoE + AdamW", OPTIONS, 1e-4), ("MoE + OMoE", OPTIONS, 1e-4)
    variants = {name: (OPTIONS, 1e-4) for name in ("ramp", "delay", "longer")}
    tasks = ("movie_reviews", "conll2003", "privacy_qa")
    # on every task AdamW's cosine is 0.90 and the default's 0.86, scoring 84: a variant moves
    # the experts apart at <= 0.85, keeps the diversity at <= 0.88; (cosine, validation) of
    # each variant on each task
    found = {"ramp": [(0.87, 85.0), (0.87, 84.0), (0.89, 84.0)],  # keeps on 2, +0.33
             "delay": [(0.89, 88.0), (0.89, 88.0), (0.89, 88.0)],  # nothing, +4
             "longer": [(0.84, 83.0), (0.89, 84.0), (0.84, 84.0)]}  # apart on 2, -0.33
    records = [record(task=t, config=name, cos=cos, valid=valid)
               for name, scores in found.items() for t, (cos, valid) in zip(tasks, scores)]
    records += [record(task=t, config=name, cos=cos, valid=valid) for t in tasks
                for name, cos, valid in (("MoE + AdamW", 0.90, 85.0), ("MoE + OMoE", 0.86, 84.0))]
    selections = {t: (variants, adamw, default) for t in tasks}
    assert best_variant(records, {"movie_reviews": selections["movie_reviews"]}) == "longer"
    assert best_variant(records, selections) == "longer"  # apart on two: first
    for r in records:  # the longer steps only keep the diversity on the questions: as the
        if r["config"] == "longer" and r["task"] == "privacy_qa":  # ramp does, on two tasks;
            r["cos"] = 0.87  # of the two, the higher average over the default
    assert best_variant(records, selections) == "ramp"
    missing = [r for r in records if not (r["config"] == "delay" and r["task"] != "conll2003")]
    with pytest.raises(SelectionIncomplete, match="(?s)'delay' on movie_reviews.*'delay' on "
                       "privacy_qa"):  # every missing run is named
        best_variant(missing, selections)


def test_the_bar_keeps_accuracy_within_one_spread_and_wants_the_experts_apart_by_005_and_3():
    base = [record(stage="final", seed=s, test=t, cos=c)
            for s, t, c in ((1, 85.0, 0.90), (2, 86.0, 0.91), (3, 87.0, 0.92))]  # sd 1, 0.01
    row = lambda tests, coss: [record(stage="final", seed=s, test=t, cos=c)  # noqa: E731
                               for s, t, c in zip((1, 2, 3), tests, coss)]
    v = verdict(base, row([84.0, 85.0, 86.0], [0.84, 0.85, 0.86]))
    assert v["test"] == pytest.approx(-1.0) and v["test_spread"] == pytest.approx(1.0)
    assert v["cos"] == pytest.approx(-0.06) and v["cos_spread"] == pytest.approx(0.01)
    assert v["kept"] and v["apart"]  # 1 point lower is one spread: kept; 0.06 >= 0.05, 0.03
    v = verdict(base, row([83.9, 84.9, 85.9], [0.851, 0.861, 0.871]))
    assert not v["kept"] and not v["apart"]  # 1.1 points lower; 0.049 < 0.05
    assert verdict(base, row([83.0, 84.0, 88.0], [0.80, 0.86, 0.86]))["kept"]  # sd 2.6
    assert not verdict(base, row([86.0] * 3, [0.80, 0.86, 0.86]))["apart"]  # 3 sd 0.10 > 0.06
    assert verdict(base, row([86.0] * 2, [0.8] * 2)) is None  # two seeds: no verdict
    assert verdict(base[:2], row([86.0] * 3, [0.8] * 3)) is None


def test_the_report_holds_the_candidates_to_the_bar_on_each_task_and_sums_them_up():
    def runs(task, config, tests, coss):
        return [record(task=task, config=config, stage="final", seed=s, test=t, cos=c)
                for s, t, c in zip((1, 2, 3), tests, coss)]
    records = [*runs("movie_reviews", "MoE + AdamW", [85.0, 86.0, 87.0], [0.90, 0.91, 0.92]),
               *runs("movie_reviews", "MoE + OMoE", [84.0, 85.0, 86.0], [0.84, 0.85, 0.86]),
               *runs("movie_reviews", "ramp", [86.0, 86.0, 86.0], [0.89, 0.90, 0.91]),
               *runs("conll2003", "MoE + AdamW", [85.0, 86.0, 87.0], [0.90, 0.91, 0.92]),
               *runs("conll2003", "MoE + OMoE", [80.0, 81.0, 82.0], [0.84, 0.85, 0.86])[:2]]
    text = report(records, "cmd", candidates=["MoE + OMoE", "ramp"])
    section = text[text.index("## movie_reviews"):text.index("## conll2003")]
    assert "| configuration | test acc difference | spread | accuracy kept |" in section
    assert "| MoE + OMoE | -1.0 | 1.0 | **yes** | -0.060 | 0.010 | **yes** |" in section
    assert "| ramp | +0.0 | 1.0 | **yes** | -0.010 | 0.010 | no |" in section
    assert "accuracy kept" not in text[text.index("## conll2003"):]  # OMoE has 2 seeds there
    selecting = report([record(task="conll2003")], "cmd")
    assert "No final runs yet" in selecting and "| test" not in selecting
    head = text[:text.index("## movie_reviews")]
    assert ("- MoE + OMoE: accuracy kept on 1 of 1 tasks measured (movie_reviews), experts "
            "apart on 1 (movie_reviews).") in head
    assert ("- ramp: accuracy kept on 1 of 1 tasks measured (movie_reviews), experts apart on "
            "0 (none).") in head
    assert "accuracy kept" not in report(records[:6], "cmd")[:20]
    assert ("- movie_reviews: for accuracy, *MoE + AdamW* (test 86.0; within a spread of it: "
            "*MoE + OMoE*, *ramp*); for diverse experts at that bar's accuracy, *MoE + OMoE* "
            "(expert cosine 0.850, *MoE + AdamW* 0.910).") in head
    # kept on both tasks measured, apart on one: short of the bar (3 tasks, apart on 2)
    assert "No configuration measured so far meets the bar." in head
    assert "- conll2003:" not in head  # OMoE's 2 seeds: AdamW alone has 3


def test_the_scale_point_is_held_to_the_bar_against_its_own_adamw_and_not_summed_up():
    def runs(config, tests, coss):
        return [record(config=config, stage="final", seed=s, test=t, cos=c)
                for s, t, c in zip((1, 2, 3), tests, coss)]
    records = [*runs("MoE + AdamW", [85.0, 86.0, 87.0], [0.90, 0.91, 0.92]),
               *runs("MoE + OMoE", [84.0, 85.0, 86.0], [0.84, 0.85, 0.86]),
               *runs("8x AdamW", [88.0, 88.0, 88.0], [0.70, 0.71, 0.72]),
               *runs("8x OMoE", [86.0, 86.5, 87.0], [0.60, 0.61, 0.62])]
    text = report(records, "cmd", other_bars={"8x AdamW": ["8x OMoE"]})
    first, second = text.split("\nAgainst MoE + AdamW (3 seeds")[1].split("\nAgainst 8x AdamW")
    assert "| MoE + OMoE | -1.0 | 1.0 | **yes** |" in first and "8x" not in first
    assert "| 8x OMoE | -1.5 | 0.5 | no | -0.100 | 0.010 | **yes** |" in second
    head = text[:text.index("## movie_reviews")]
    assert "- 8x OMoE:" not in head and "- MoE + OMoE: accuracy kept on 1 of 1" in head
    # the picks are among the 4-expert rows: 8x AdamW's higher score is in its own table
    assert ("(*8x AdamW*, *8x OMoE* left out: another model, held to a bar of its own):\n\n"
            "- movie_reviews: for accuracy, *MoE + AdamW* (test 86.0;") in head
    assert "\nAgainst 8x AdamW" not in report(records[:9], "cmd",
                                               other_bars={"8x AdamW": ["8x OMoE"]})


def test_a_baseline_with_every_seed_is_held_to_the_bar_in_its_task_and_not_summed_up():
    def runs(config, tests, coss):
        return [record(config=config, stage="final", seed=s, test=t, cos=c)
                for s, t, c in zip((1, 2, 3), tests, coss)]
    records = [*runs("MoE + AdamW", [85.0, 86.0, 87.0], [0.90, 0.91, 0.92]),
               *runs("MoE + OMoE", [84.0, 85.0, 86.0], [0.84, 0.85, 0.86]),
               *runs("loss", [85.5, 85.5, 85.5], [0.40, 0.41, 0.42]),
               *runs("drop", [80.0], [0.60])]
    text = report(records, "cmd", baselines=["drop", "loss"])
    head, section = text.split("## movie_reviews")
    assert "| loss | -0.5 | 1.0 | **yes** | -0.500 | 0.010 | **yes** |" in section
    assert "| drop |" not in section.split("Early learning")[0].split("| experts apart |")[1]
    assert "- loss:" not in head and "- MoE + OMoE: accuracy kept on 1 of 1" in head
    # the picks hold it to the bar like any row with every seed
    assert "for diverse experts at that bar's accuracy, *loss* (expert cosine 0.410" in head
    assert "| loss |" not in report(records, "cmd").split("| experts apart |")[1].split(
        "Early learning")[0]


def test_the_bar_is_met_by_accuracy_kept_on_all_three_tasks_and_experts_apart_on_two():
    def runs(task, config, tests, coss):
        return [record(task=task, config=config, stage="final", seed=s, test=t, cos=c)
                for s, t, c in zip((1, 2, 3), tests, coss)]
    adamw = [0.90, 0.91, 0.92]
    records = [r for task, ramp in [("movie_reviews", [0.84, 0.85, 0.86]),
                                    ("conll2003", [0.84, 0.85, 0.86]),
                                    ("privacy_qa", [0.89, 0.90, 0.91])]
               for r in [*runs(task, "MoE + AdamW", [85.0, 86.0, 87.0], adamw),
                         *runs(task, "MoE + OMoE", [83.0, 84.0, 85.0], ramp),
                         *runs(task, "ramp", [85.0, 86.0, 87.0], ramp)]]
    head = report(records, "cmd", candidates=["MoE + OMoE", "ramp"]).split("## ")[0]
    # OMoE: apart on two tasks, but 2 points of accuracy lost (a spread: 1) on all three
    assert "- MoE + OMoE: accuracy kept on 0 of 3 tasks" in head
    assert ("- ramp: accuracy kept on 3 of 3 tasks measured (movie_reviews, conll2003, "
            "privacy_qa), experts apart on 2 (movie_reviews, conll2003).") in head
    assert "The bar is met by *ramp*." in head
    # two tasks measured are not enough, however far apart
    assert "No configuration measured so far meets the bar." in report(
        [r for r in records if r["task"] != "privacy_qa"], "cmd", candidates=["ramp"])


def test_the_bar_on_validation_holds_the_final_runs_validation_scores_to_it():
    def runs(task, config, valids, coss):  # test scores all 86: every row keeps them
        return [record(task=task, config=config, stage="final", seed=s, valid=v, test=86.0,
                       cos=c) for s, v, c in zip((1, 2, 3), valids, coss)]
    records = [r for task in ("movie_reviews", "conll2003", "privacy_qa") for r in [
        *runs(task, "MoE + AdamW", [85.0, 86.0, 87.0], [0.90, 0.91, 0.92]),
        # apart everywhere; on validation 2 points lower (a spread: 1) on the movie reviews
        *runs(task, "longer", [83.0, 84.0, 85.0] if task == "movie_reviews" else
              [85.0, 86.0, 87.0], [0.84, 0.85, 0.86])]]
    head = report(records, "cmd", candidates=["longer"]).split("## ")[0]
    on_test, on_valid = head.split("The same bar on validation")
    assert "The bar is met by *longer*." in on_test
    assert ("- longer: accuracy kept on 2 of 3 tasks measured (conll2003, privacy_qa), experts "
            "apart on 3 (movie_reviews, conll2003, privacy_qa).") in on_valid
    assert "On validation, no configuration measured so far meets the bar." in on_valid
    kept = [{**r, "valid": r["valid"] + 1.5} if r["config"] == "longer" else r for r in records]
    assert "On validation, the bar is met by *longer*." in report(kept, "cmd",
                                                                  candidates=["longer"])


def test_the_default_is_the_candidate_closest_to_the_bar_on_validation():
    def runs(task, config, valids, coss):
        return [record(task=task, config=config, stage="final", seed=s, valid=v, test=86.0,
                       cos=c) for s, v, c in zip((1, 2, 3), valids, coss)]
    adamw, lower = [85.0, 86.0, 87.0], [83.0, 84.0, 85.0]  # 2 points lower: a spread is 1
    apart, close = [0.84, 0.85, 0.86], [0.89, 0.90, 0.91]
    tasks = ("movie_reviews", "conll2003", "privacy_qa")

    def head(default_valids, longer_valids, longer_coss=apart):
        """The report's head: the default close to AdamW's experts everywhere, the longer
        steps apart; their validation scores by task."""
        records = [r for i, task in enumerate(tasks) for r in [
            *runs(task, "MoE + AdamW", adamw, [0.90, 0.91, 0.92]),
            *runs(task, "default", default_valids[i], close),
            *runs(task, "longer", longer_valids[i], longer_coss)]]
        return report(records, "cmd", candidates=["default", "ramp", "longer"]).split("## ")[0]

    chosen = "The default by this count ("
    # (a variant without final runs, "ramp", is no candidate) neither meets the bar on
    # validation (both lose accuracy on the movie reviews): as much
    # accuracy kept (2 tasks), the longer steps apart on 3, the default on none
    text = head([lower, adamw, adamw], [lower, adamw, adamw])
    assert "On validation, no configuration measured so far meets the bar." in text
    assert "on a tie): *longer*." in text
    # accuracy first: kept on one task fewer, however far apart
    assert "on a tie): *default*." in head([lower, adamw, adamw], [lower, lower, adamw])
    # a tie: the one named first, the present default
    assert "on a tie): *default*." in head([adamw] * 3, [adamw] * 3, close)
    # the bar met on validation: that one
    assert "on a tie): *longer*." in head([adamw] * 3, [adamw] * 3)
    # no choice while a candidate is measured on fewer tasks than the bar's
    records = [r for task in tasks[:2] for r in [
        *runs(task, "MoE + AdamW", adamw, [0.90, 0.91, 0.92]),
        *runs(task, "default", adamw, close), *runs(task, "longer", adamw, apart)]]
    assert chosen not in report(records, "cmd", candidates=["default", "longer"])


def test_the_picks_leave_out_a_row_that_loses_accuracy_and_the_dense_row():
    def runs(config, tests, coss):
        return [record(config=config, stage="final", seed=s, test=t, cos=c)
                for s, t, c in zip((1, 2, 3), tests, coss)]
    records = [*runs("dense fine-tune", [88.0, 88.5, 89.0], [None] * 3),
               *runs("MoE + AdamW", [86.0, 86.2, 86.4], [0.90, 0.91, 0.92]),
               *runs("MoE + OMoE", [84.0, 84.2, 84.4], [0.70, 0.71, 0.72]),
               *runs("ramp", [86.0, 86.1, 86.2], [0.85, 0.86, 0.87])]
    assert ("- movie_reviews: for accuracy, *dense fine-tune* (test 88.5); for diverse experts "
            "at that bar's accuracy, *ramp* (expert cosine 0.860, *MoE + AdamW* 0.910).\n") \
        in report(records, "cmd")
    # a baseline's one seed is named with its numbers, and neither picked nor held to the bar
    records += runs("loss", [86.3], [0.42])
    assert ("*ramp* (expert cosine 0.860, *MoE + AdamW* 0.910). Fewer seeds, not held to the "
            "bar: *loss* (test 86.3, expert cosine 0.420).\n") in report(records, "cmd")


def test_a_control_is_measured_by_the_share_of_its_controlled_rows_drop_in_cosine():
    def runs(task, config, coss, deltas):
        return [record(task=task, config=config, stage="final", seed=s, cos=c, delta=d)
                for s, c, d in zip((1, 2, 3), coss, deltas)]
    records = [*runs("movie_reviews", "MoE + AdamW", [0.90, 0.91, 0.92], [0.09] * 3),
               *runs("movie_reviews", "longer", [0.80, 0.81, 0.82], [0.01] * 3),
               *runs("movie_reviews", "unprojected", [0.86], [0.08]),
               *runs("conll2003", "MoE + AdamW", [0.90] * 3, [0.2] * 3),
               *runs("conll2003", "longer", [0.85] * 3, [0.1] * 3)]  # no control run there
    head = report(records, "cmd", controls={"unprojected": "longer"}).split("## ")[0]
    assert ("The control *unprojected* of *longer*, on each task where it has a final run: "
            "how far its experts end below *MoE + AdamW*'s in output cosine, against how far "
            "those of *longer* do:\n\n- movie_reviews: expert cosine 0.860, 0.050 below "
            "*MoE + AdamW*'s 0.910 ± 0.010, where *longer*'s 0.810 ± 0.010 is 0.100 below: 50 % "
            "of the way; displacement cosine 0.080 (*MoE + AdamW* 0.090 ± 0.000, *longer* "
            "0.010 ± 0.000).\n") in head
    assert "- conll2003: expert cosine" not in head
    assert "The control" not in report(records[:6], "cmd", controls={"unprojected": "longer"})


def test_the_report_names_each_commit_once():
    records = [record(commit="aaaaaaaaaaaaaaaa-dirty + bbbbbbbbbbbbbbbbbbbb"),
               record(lr=3e-4, commit="bbbbbbbbbbbbbbbbbbbb")]
    assert ("code at aaaaaaaaaaaa (with uncommitted changes), bbbbbbbbbbbb."
            in report(records, "cmd"))
    records += [record(lr=lr, commit=f"{n}" * 40) for n, lr in ((1, 1e-3), (2, 1e-2))]
    assert ("code at 4 commits (each record names its own); with uncommitted changes: "
            "aaaaaaaaaaaa." in report(records, "cmd"))
