"""What omoe-prepare-data refuses before writing anything, by file and line: a valid or test
label that training never shows (or its mapping, --unseen-label), a label of more than one
word, and a text longer than --max-tokens under --long-texts refuse; pairs are cut from the
end, as serving cuts them."""

import logging
from pathlib import Path

import pytest

from omoe_plugin.data.checks import LongTexts, fit_pair, map_unseen_labels
from omoe_plugin.data.cli import cli_main
from omoe_plugin.data.tables import Columns, read_examples
from tests.cli import exits_with

TRAIN = "text\tlabel\nA gripping, funny film .\tpos\nDull and far too long .\tneg\n"


def splits_argv(tmp_path: Path, valid: str, test: str = TRAIN, *options: str) -> list[str]:
    """omoe-prepare-data's arguments for TSV splits of these contents (train: TRAIN)."""
    argv = [str(tmp_path / "bin"), *options]
    for split, text in (("train", TRAIN), ("valid", valid), ("test", test)):
        (tmp_path / f"{split}.tsv").write_text(text, encoding="utf-8")
        argv += [f"--{split}", str(tmp_path / f"{split}.tsv")]
    return argv


def train_file(tmp_path: Path) -> Path:
    """TRAIN written as tmp_path/train.tsv."""
    path = tmp_path / "train.tsv"
    path.write_text(TRAIN, encoding="utf-8")
    return path


def test_a_label_training_never_shows_is_refused_with_its_file_and_line(tmp_path):
    valid = "text\tlabel\nWorth a look .\tpos\nNot bad at all .\tmixed\nSo so .\tmixed\n"
    message = exits_with(cli_main, splits_argv(tmp_path, valid))
    assert message.startswith(f"omoe-prepare-data: {tmp_path / 'valid.tsv'}:3: label 'mixed' "
                              "of the valid split is not in the training split's label set "
                              "(neg, pos)")
    assert "--unseen-label" in message and not (tmp_path / "bin").exists()


def test_unseen_label_maps_every_unseen_label_to_a_training_label(tmp_path, caplog):
    path = tmp_path / "valid.tsv"
    path.write_text("text\tlabel\nWorth a look .\tpos\nNot bad .\tmixed\nHm .\tmeh\n")
    train = read_examples(train_file(tmp_path), Columns())
    splits = {"train": train, "valid": read_examples(path, Columns()), "test": train}
    with caplog.at_level(logging.WARNING):
        mapped = map_unseen_labels(splits, unseen_label="neg")
    assert [e.label for e in mapped["valid"]] == ["pos", "neg", "neg"]
    assert mapped["test"] == train
    assert f"2 valid/test examples have a label training never shows, now 'neg' " \
        f"(--unseen-label; the first: {path}:3, 'mixed')" in caplog.text
    with pytest.raises(ValueError, match=r"--unseen-label 'other' is not a label of the "
                                         r"training split \(neg, pos\)"):
        map_unseen_labels(splits, unseen_label="other")


@pytest.mark.parametrize("label, message", [
    ("sport news", "the label 'sport news' (column 'label', --label-column) holds a space: "
                   "fairseq reads a label as one word, so it would become 2 labels; write it as "
                   "one word, e.g. 'sport_news'"),
    ("<unk>", "the label '<unk>' (column 'label', --label-column) is one of fairseq's special "
              "symbols"),
])
def test_a_label_fairseq_cannot_read_as_one_class_is_refused(tmp_path, label, message):
    valid = f"text\tlabel\nWorth a look .\tpos\nTwo goals in extra time .\t{label}\n"
    assert exits_with(cli_main, splits_argv(tmp_path, valid)).startswith(
        f"omoe-prepare-data: {tmp_path / 'valid.tsv'}:3: {message}")


def test_a_text_over_max_tokens_is_refused_with_long_texts_refuse(tmp_path):
    test = "text\tlabel\nGood .\tpos\nA gripping, funny, warm and far too long film .\tpos\n"
    argv = splits_argv(tmp_path, TRAIN, test, "--max-tokens", "6", "--long-texts", "refuse")
    assert exits_with(cli_main, argv) == (
        f"omoe-prepare-data: {tmp_path / 'test.tsv'}:3: the text is 12 sub-words, more than "
        "the 6 that fit (--max-tokens 6: the model's positions less <s> and </s>): shorten it, "
        "raise --max-tokens if the model has more positions, or pass --long-texts truncate")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test.tsv", "train.tsv", "valid.tsv"]


def test_a_pair_is_cut_from_the_end_and_counted_once(caplog):
    limit = LongTexts("truncate", 5, "pair", "truncated, the second text first")
    a, b = "q1 q2".split(), "c1 c2 c3 c4".split()
    assert fit_pair(a, b, limit, "x.tsv:2") == (a, ["c1", "c2", "c3"])
    assert fit_pair(b + b, a, limit, "x.tsv:3") == ((b + b)[:5], [])
    assert fit_pair(a, a, limit, "x.tsv:4") == (a, a)
    with caplog.at_level(logging.WARNING):
        limit.report()
    assert "2 pairs longer than 5 sub-words were truncated, the second text first (the " \
        "first: x.tsv:2)" in caplog.text
    with pytest.raises(ValueError, match="x.tsv:2: the pair is 6 sub-words, more than the 5"):
        fit_pair(a, b, LongTexts("refuse", 5, "pair", "truncated"), "x.tsv:2")
