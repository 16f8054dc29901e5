"""CoNLL reading and sub-word alignment: first sub-word tagged, the rest ignored; long
sentences cut at word boundaries, reported once (or refused, --long-texts refuse); bad lines
and unseen tags named by file and line; the binarised directory is what the token-classification
task reads."""

import logging
import re
from pathlib import Path

import pytest

from omoe_plugin.data.cli import cli_main as prepare_main
from omoe_plugin.data.conll import IGNORED, align, check_tag_sets, prepare_tagging, read_conll
from omoe_plugin.data.movie_reviews import wordpiece_tokenizer
from omoe_plugin.data.sources import conll2003_texts

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
unbelievably RB I-VP O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
"""


def test_sentences_words_and_tags_are_read_with_their_line():
    sentences = read_conll(Path("x.txt"), CONLL)
    assert [s.words for s in sentences] == [["EU", "rejects", "unbelievably"],
                                           ["Peter", "Blackburn"]]
    assert sentences[1].tags == ["B-PER", "I-PER"] and sentences[1].where == "x.txt:7"


@pytest.mark.parametrize("line, message", [
    ("Peter NNP B-PER", "x.txt:9: expected 4 columns"),
    ("Peter NNP B-NP PERSON", "x.txt:9: 'PERSON' is not a tag"),
])
def test_a_bad_line_is_named(line, message):
    with pytest.raises(ValueError, match=message):
        read_conll(Path("x.txt"), CONLL + line + "\n")


def test_a_tag_unseen_in_training_names_its_sentence():
    train = read_conll(Path("train.txt"), CONLL)
    valid = read_conll(Path("valid.txt"), "Paris NNP B-NP B-LOC\n")
    with pytest.raises(ValueError, match="valid.txt:1: tag 'B-LOC' of the valid split"):
        check_tag_sets({"train": train, "valid": valid, "test": train})


def test_first_subword_carries_the_tag_and_long_sentences_are_cut():
    sentence = read_conll(Path("x.txt"), CONLL)[0]
    tokenizer = wordpiece_tokenizer()
    [(subwords, labels, words, tags)] = align(sentence, tokenizer, max_tokens=126)
    pieces = tokenizer.tokenize(["unbelievably"])[0]
    assert len(pieces) > 1 and subwords[2:] == pieces
    assert labels == ["B-ORG", "O", "O"] + [IGNORED] * (len(pieces) - 1)
    assert (words, tags) == (sentence.words, sentence.tags)
    cut = align(sentence, tokenizer, max_tokens=len(pieces) + 1)
    assert [p[2] for p in cut] == [["EU", "rejects"], ["unbelievably"]]
    with pytest.raises(ValueError, match="alone is"):
        align(sentence, tokenizer, max_tokens=len(pieces) - 1)


def test_bundled_conll2003_has_its_published_sizes():
    sizes = {split: len(read_conll(Path(split), text))
             for split, text in conll2003_texts().items()}
    assert sizes == {"train": 14041, "valid": 3250, "test": 3453}


def test_prepared_directory_aligns_tokens_and_labels(tmp_path):
    files = {}
    for split in ("train", "valid", "test"):
        files[split] = tmp_path / f"{split}.txt"
        files[split].write_text(CONLL)
    sizes = prepare_tagging(tmp_path / "data", files, wordpiece_tokenizer())
    assert sizes == {"train": 2, "valid": 2, "test": 2}
    raw = tmp_path / "data" / "raw"
    for tokens, labels in zip((raw / "train.input0").read_text().splitlines(),
                              (raw / "train.label").read_text().splitlines()):
        assert len(tokens.split()) == len(labels.split())
    tags = (tmp_path / "data" / "label" / "dict.txt").read_text().split()[::2]
    assert tags == ["B-ORG", "B-PER", "I-PER", "O"]
    assert (tmp_path / "data" / "tokenizer.json").is_file()
    files["test"].write_text("Paris NNP B-NP B-LOC\n")
    with pytest.raises(ValueError, match="test.txt:1"):
        prepare_tagging(tmp_path / "data", files, wordpiece_tokenizer())
    assert (raw / "train.input0").is_file()  # the earlier directory is kept whole


def long_sentence_files(tmp_path) -> dict[str, Path]:
    """CONLL splits whose training file ends with one sentence of 3,000 words (line 10 on)."""
    files = {split: tmp_path / f"{split}.txt" for split in ("train", "valid", "test")}
    for split, path in files.items():
        path.write_text(CONLL + ("\n" + "word NN I-NP O\n" * 3000 if split == "train" else ""))
    return files


def test_one_long_sentence_is_reported_as_one_with_its_line(tmp_path, caplog):
    files = long_sentence_files(tmp_path)
    with caplog.at_level(logging.WARNING):
        sizes = prepare_tagging(tmp_path / "data", files, wordpiece_tokenizer())
    pieces = sizes["train"] - 2
    assert pieces == -(-3000 // 126) and [r.getMessage() for r in caplog.records] == [
        f"1 sentence longer than 126 sub-words was cut into pieces at word boundaries, "
        f"{pieces} pieces in all (the first: {files['train']}:10); pass --long-texts refuse to "
        "stop at such an example instead"]
    with pytest.raises(ValueError, match=rf"train.txt:10: the sentence is 3000 sub-words, more "
                                         r"than the 126 that fit \(--max-tokens 126"):
        prepare_tagging(tmp_path / "refused", files, wordpiece_tokenizer(), long_texts="refuse")
    assert not (tmp_path / "refused").exists()


def test_a_malformed_line_stops_preparation_with_file_and_line(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n")
    bad = tmp_path / "train.txt"
    bad.write_text("EU NNP B-NP B-ORG\nrejects O\n")
    args = [str(tmp_path / "out"), "--format", "conll", "--train", str(bad),
            "--valid", str(good), "--test", str(good)]
    with pytest.raises(SystemExit, match=rf"{re.escape(str(bad))}:2: expected 4 columns"):
        prepare_main(args)
    assert not (tmp_path / "out").exists()
