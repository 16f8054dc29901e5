"""One run's directory: its validation curve read back from its log."""

from omoe_plugin.analysis.runs import curve

LINE = ("2026-12-06 14:08:29 | INFO | valid | epoch 001 | valid on '{split}' subset | loss 0.428 "
        "| accuracy 91.66 | entity_f1 {f1} | wps 1364.5 | num_updates {n}{best}")


def test_the_curve_holds_each_validation_once_in_order_with_the_runs_metric(tmp_path):
    lines = ["=== segment 1: fairseq-train ...",
             "2026-12-06 14:08:00 | INFO | train_inner | epoch 001: num_updates=100, entity_f1=3",
             LINE.format(split="valid", f1=50.86, n=110, best=""),
             LINE.format(split="valid", f1=79.7, n=220, best=" | best_entity_f1 79.7"),
             "=== segment 2: fairseq-train ...",  # killed before update 220's checkpoint
             LINE.format(split="valid", f1=79.7, n=220, best=" | best_entity_f1 79.7"),
             LINE.format(split="valid", f1=84.46, n=330, best=" | best_entity_f1 84.46"),
             LINE.format(split="test", f1=83.0, n=330, best="")]  # not the validation split
    (tmp_path / "train.log").write_text("\n".join(lines) + "\n")
    assert curve(tmp_path, "entity_f1") == [[110, 50.86], [220, 79.7], [330, 84.46]]
    assert curve(tmp_path, "accuracy") == [[110, 91.66], [220, 91.66], [330, 91.66]]
