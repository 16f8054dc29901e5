"""omoe-prepare-data on a user's own files: TSV/CSV/JSON lines, single texts and pairs, class
labels and regression targets, WordPiece and sentencepiece, clear errors and no partial
output; the record of the classes, raw files one example a line, texts cut to --max-tokens.
The texts are real movie-review sentences of the bundled corpus."""

import csv
import json
import logging
from contextlib import contextmanager
from typing import Iterator

import pytest
from fairseq.data import Dictionary, data_utils

from omoe_plugin.data.cli import cli_main
from omoe_plugin.data.movie_reviews import parse
from omoe_plugin.data.prepare import SPLITS
from omoe_plugin.data.sources import minilm_dir, rated_lines
from omoe_plugin.data.subword import from_file, saved_in
from omoe_plugin.data.tables import Columns, read_examples, split_deterministically
from tests.cli import run


def real_reviews():
    """The first 300 real movie-review sentences (ratings not 0)."""
    return [r for r in parse(rated_lines())[:300] if r.rating != 0]


@pytest.fixture(scope="module")
def reviews():
    return real_reviews()


def pair_rows(reviews):
    """A real pair task from rated sentences: do two consecutive reviews agree in sentiment?"""
    return [{"first": a.text, "second": b.text, "same": "yes" if (a.rating > 0) == (b.rating > 0)
             else "no", "gap": abs(a.rating - b.rating)} for a, b in zip(reviews, reviews[1:])]


def write_tsv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t",
                                quoting=csv.QUOTE_NONE, escapechar="\\")
        writer.writeheader()
        writer.writerows(rows)


def decoded(out, split, column):
    """The binarised column of a split, back as token strings (no <s>/</s>)."""
    words = Dictionary.load(str(out / "input0" / "dict.txt"))
    data = data_utils.load_indexed_dataset(str(out / column / split), words)
    return [[words[i] for i in data[n].tolist()[:-1]] for n in range(len(data))]


def test_tsv_pairs_are_binarised_token_for_token(reviews, tmp_path):
    path = tmp_path / "pairs.tsv"
    write_tsv(path, pair_rows(reviews))
    out = tmp_path / "bin"
    cli_main([str(out), "--input", str(path), "--text-column", "first", "--pair-column",
              "second", "--label-column", "same"])
    tokenizer = saved_in(out)
    assert tokenizer.kind == "tokenizers"
    splits = split_deterministically(read_examples(path, Columns("first", "second", "same")))
    words = set(Dictionary.load(str(out / "input0" / "dict.txt")).symbols)
    # the dictionary is the training split's (both texts): elsewhere, unseen tokens are <unk>
    known = lambda texts: [[t if t in words else "<unk>" for t in tokens]
                           for tokens in tokenizer.tokenize(texts)]
    for split, examples in splits.items():
        assert decoded(out, split, "input0") == known([e.text for e in examples])
        assert decoded(out, split, "input1") == known([e.pair for e in examples])
    assert decoded(out, "train", "input1") == tokenizer.tokenize([e.pair for e in splits["train"]])
    labels = Dictionary.load(str(out / "label" / "dict.txt"))
    assert {"yes", "no"} <= set(labels.symbols)


def test_the_files_are_fairseq_preprocess_s_own(reviews, tmp_path):
    """Binarised in-process, byte for byte what fairseq-preprocess --only-source writes: a
    column with the given dictionary and the labels with the one it counts, 2 workers."""
    write_tsv(tmp_path / "pairs.tsv", pair_rows(reviews))
    out = tmp_path / "bin"
    cli_main([str(out), "--input", str(tmp_path / "pairs.tsv"), "--text-column", "first",
              "--pair-column", "second", "--label-column", "same", "--workers", "2"])
    for column, given in (("input1", ["--srcdict", str(out / "input0" / "dict.txt")]),
                          ("label", [])):
        raw = [a for s in SPLITS for a in (f"--{s}pref", str(out / "raw" / f"{s}.{column}"))]
        run("fairseq-preprocess", "--only-source", *raw, "--destdir", str(tmp_path / column),
            "--workers", "2", *given)
        theirs = sorted(p.name for p in (tmp_path / column).iterdir() if p.suffix != ".log")
        assert theirs == sorted(p.name for p in (out / column).iterdir())
        for name in theirs:
            assert (out / column / name).read_bytes() == (tmp_path / column / name).read_bytes()


def test_regression_targets_from_json_lines(reviews, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in pair_rows(reviews)), encoding="utf-8")
    out = tmp_path / "bin"
    cli_main([str(out), "--input", str(path), "--text-column", "first", "--pair-column",
              "second", "--label-column", "gap", "--regression"])
    targets = (out / "label" / "train.label").read_text().split()
    assert len(targets) == len(decoded(out, "train", "input0"))
    assert all(float(t) >= 0 for t in targets) and not (out / "label" / "dict.txt").exists()


def test_csv_splits_and_sentencepiece_trained_on_the_training_split(reviews, tmp_path):
    for split, part in (("train", reviews[:200]), ("valid", reviews[200:250]),
                        ("test", reviews[250:])):
        with open(tmp_path / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)  # real sentences have commas and quotes: csv quotes them
            writer.writerow(["sentence", "sentiment"])
            writer.writerows([r.text, "pos" if r.rating > 0 else "neg"] for r in part)
    out = tmp_path / "bin"
    cli_main([str(out), *[a for s in ("train", "valid", "test")
                          for a in (f"--{s}", str(tmp_path / f"{s}.csv"))],
              "--text-column", "sentence", "--label-column", "sentiment", "--train-spm", "400"])
    tokenizer = saved_in(out)
    assert tokenizer.kind == "sentencepiece" and len(tokenizer.vocabulary()) == 400
    test = decoded(out, "test", "input0")
    assert test == tokenizer.tokenize([r.text for r in reviews[250:]])
    assert all("<unk>" not in tokens for tokens in decoded(out, "train", "input0"))
    # the dictionary was built to match: every piece the model can emit has an id
    words = Dictionary.load(str(out / "input0" / "dict.txt"))
    assert set(tokenizer.vocabulary()) <= set(words.symbols)
    # a given sentencepiece model file is used as it is
    again = tmp_path / "again"
    cli_main([str(again), "--input", str(tmp_path / "train.csv"), "--text-column", "sentence",
              "--label-column", "sentiment", "--tokenizer", str(out / "spm.model")])
    assert saved_in(again).model == tokenizer.model


def test_vocab_txt_tokenises_as_the_pretrained_tokenizer_json():
    texts = [r.text for r in parse(rated_lines())[:50]]
    assert from_file(minilm_dir() / "vocab.txt").tokenize(texts) == \
        from_file(minilm_dir() / "tokenizer.json").tokenize(texts)


@pytest.mark.parametrize("content, message", [
    ("text\tlabel\nfine film\tpos\njust one column\n",
     r"rows.tsv:3: 1 columns where the header has 2"),
    ("text\tlabel\nfine film\tpos\n\tneg\n", r"rows.tsv:3: column 'text' is empty"),
    ("sentence\tlabel\nfine film\tpos\n", r"rows.tsv:2: no column 'text'"),
])
def test_a_malformed_row_names_file_line_and_column(tmp_path, content, message):
    path = tmp_path / "rows.tsv"
    path.write_text(content, encoding="utf-8")
    out = tmp_path / "bin"
    with pytest.raises(SystemExit, match=message):
        cli_main([str(out), "--input", str(path)])
    assert not out.exists() and list(tmp_path.iterdir()) == [path]


def test_bad_json_and_non_numeric_targets_name_the_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "fine", "label": "1.5"}\n{"text": "bad", "label": "high"}\n')
    with pytest.raises(ValueError,
                       match=r"rows.jsonl:2: column 'label' holds 'high', not a number"):
        read_examples(path, Columns(), regression=True)
    path.write_text('{"text": "fine", "label": "pos"}\n{"text": "bad" "label"}\n')
    with pytest.raises(ValueError, match=r"rows.jsonl:2: not a JSON object"):
        read_examples(path, Columns())


def reviews_tsv(path):
    """A TSV of real movie-review sentences (text, label: pos / neg)."""
    write_tsv(path, [{"text": r.text, "label": "pos" if r.rating > 0 else "neg"}
                     for r in real_reviews()])
    return path


def test_a_tokenizer_that_does_not_match_the_dictionary_stops_and_keeps_the_old_output(tmp_path):
    path = reviews_tsv(tmp_path / "rows.tsv")
    out = tmp_path / "bin"
    cli_main([str(out), "--input", str(path), "--train-spm", "300"])
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(SystemExit, match="the tokenizer does not match the dictionary"):
        cli_main([str(out), "--input", str(path), "--srcdict", str(out / "input0" / "dict.txt")])
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert saved_in(out).kind == "sentencepiece"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "rows.tsv"]


@pytest.fixture(scope="module")
def gpt2_files(tmp_path_factory):
    """GPT-2-format BPE files (encoder.json, vocab.bpe) of a byte-level BPE trained on real
    movie-review sentences (GPT-2's own files are not in any package)."""
    from tokenizers import ByteLevelBPETokenizer

    out = tmp_path_factory.mktemp("gpt2")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([r.text for r in parse(rated_lines())[:2000]], vocab_size=600,
                            show_progress=False)
    bpe.save_model(str(out))
    (out / "vocab.json").rename(out / "encoder.json")
    (out / "merges.txt").rename(out / "vocab.bpe")
    return out / "encoder.json", out / "vocab.bpe"


def test_gpt2_bpe_tokenises_as_fairseqs_own_encoder(gpt2_files, tmp_path):
    from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

    from omoe_plugin.data.subword import SubwordTokenizer, gpt2_bpe

    texts = [r.text for r in parse(rated_lines())[2000:2300]] + ["Münch's  naïve   café, 3.5/4!"]
    fairseq_bpe = get_encoder(*map(str, gpt2_files))
    ours = gpt2_bpe(*gpt2_files)
    expected = [[str(i) for i in fairseq_bpe.encode(t)] for t in texts]
    assert ours.tokenize(texts) == expected
    assert SubwordTokenizer.from_text("gpt2", ours.to_text()).tokenize(texts) == expected
    # binarised with a RoBERTa-style dictionary of BPE ids, read back token for token
    rows = tmp_path / "rows.tsv"
    write_tsv(rows, [{"text": t, "label": "x"} for t in texts])
    (tmp_path / "dict.txt").write_text("".join(f"{i} 1\n" for i in range(600)))
    out = tmp_path / "bin"
    cli_main([str(out), "--input", str(rows), "--gpt2-bpe", *map(str, gpt2_files),
              "--srcdict", str(tmp_path / "dict.txt")])
    assert saved_in(out).kind == "gpt2"
    assert from_file(out / "gpt2_bpe.json").tokenize(texts) == expected  # omoe-export --tokenizer
    test = split_deterministically(read_examples(rows, Columns()))["test"]
    assert decoded(out, "test", "input0") == ours.tokenize([e.text for e in test])


LEVELS = ("awful", "poor", "mixed", "good", "great")  # five classes of the rating


@contextmanager
def warnings_logged() -> Iterator[list[str]]:
    """The warnings the data package logs inside the block (a list, filled as they come)."""
    messages, handler = [], logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("omoe_plugin.data")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


@pytest.fixture(scope="module")
def five_classes(tmp_path_factory):
    """Every 35th real review in five classes of its rating, as CSV splits (id % 10: 0 test,
    1 valid) whose first training text spans two lines, prepared with --max-tokens 24:
    (directory, {split: [(text, label)]}, the warnings logged)."""
    tmp = tmp_path_factory.mktemp("five_classes")
    reviews = [r for r in parse(rated_lines())[::35] if r.rating != 0]
    rows = {"train": [("A fine\nfilm .", "good")], "valid": [], "test": []}
    for i, r in enumerate(reviews):
        label = LEVELS[sum(r.rating > t for t in (-2, -0.7, 0.7, 2))]
        rows[{0: "test", 1: "valid"}.get(i % 10, "train")].append((r.text, label))
    argv = [str(tmp / "bin"), "--max-tokens", "24"]
    for split, split_rows in rows.items():
        with open(tmp / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([("text", "label"), *split_rows])
        argv += [f"--{split}", str(tmp / f"{split}.csv")]
    with warnings_logged() as warnings:
        cli_main(argv)
    return tmp / "bin", rows, warnings


def test_the_record_holds_the_classes_in_class_index_order(five_classes):
    out, _, _ = five_classes
    record = json.loads((out / "omoe-data.json").read_text())
    labels = Dictionary.load(str(out / "label" / "dict.txt")).symbols[4:4 + len(LEVELS)]
    assert record["num_classes"] == 5 and record["labels"] == labels
    assert sorted(labels) == sorted(LEVELS)
    assert (record["max_tokens"], record["max_positions"], record["pairs"]) == (24, 26, False)


def test_raw_texts_and_labels_stay_aligned_when_a_field_spans_lines(five_classes):
    out, rows, _ = five_classes
    for split, split_rows in rows.items():
        texts = (out / "raw" / f"{split}.text").read_text().splitlines()
        labels = (out / "raw" / f"{split}.label").read_text().splitlines()
        assert list(zip(texts, labels)) == [(t.replace("\n", " "), lab) for t, lab in split_rows]
    assert decoded(out, "train", "input0")[0] == ["a", "fine", "film", "."]


def test_texts_over_max_tokens_are_truncated_and_reported_once(five_classes):
    out, rows, warnings = five_classes
    tokenizer = saved_in(out)
    lengths = {s: [len(t) for t in tokenizer.tokenize([r[0] for r in rs])]
               for s, rs in rows.items()}
    over = sum(n > 24 for ns in lengths.values() for n in ns)
    first = next(i for i, n in enumerate(lengths["train"]) if n > 24)  # row 0 has two lines
    assert over > 1 and warnings == [
        f"{over} texts longer than 24 sub-words were truncated (the first: "
        f"{out.parent / 'train.csv'}:{first + 3}); pass --long-texts refuse to stop at such an "
        "example instead"]
    for split in rows:
        assert max(len(t) for t in decoded(out, split, "input0")) == 24
