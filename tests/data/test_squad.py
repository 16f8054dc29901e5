"""Extractive-QA data: SQuAD JSON and JSON lines, answers checked against their contexts,
sub-word character spans, overlapping windows, the bundled Disfl-QA, and the written layout; a
broken JSON file named at the line and column where it breaks."""

import json
import re

import pytest
from fairseq.data import Dictionary

from omoe_plugin.data.binarised import leading_sentences
from omoe_plugin.data.cli import cli_main as prepare_main
from omoe_plugin.data.movie_reviews import wordpiece_tokenizer
from omoe_plugin.data.squad import (
    Question,
    disflqa_questions,
    prepare_span_qa,
    read_squad,
    windows,
)
from omoe_plugin.data.subword import train_sentencepiece

CONTEXT = ("The Normans were the people who in the 10th and 11th centuries gave their name to "
           "Normandy, a region in France. They were descended from Norse raiders and pirates "
           "from Denmark, Iceland and Norway who, under their leader Rollo, agreed to swear "
           "fealty to King Charles III of West Francia.")


def qa(question: str, answer: str, context: str = CONTEXT) -> dict:
    return {"question": question, "context": context,
            "answers": [{"text": answer, "answer_start": context.index(answer)}]}


def test_squad_json_and_json_lines_read_alike_and_unanswerable_questions_are_skipped(tmp_path):
    rows = [qa("In what country is Normandy?", "France"), qa("Who was their leader?", "Rollo")]
    lines = tmp_path / "train.jsonl"
    lines.write_text("".join(json.dumps(r) + "\n" for r in rows))
    squad = tmp_path / "train.json"
    qas = [{"id": str(i), "question": r["question"], "answers": r["answers"]}
           for i, r in enumerate(rows)] + [{"id": "x", "question": "Why?", "answers": [],
                                            "is_impossible": True}]
    squad.write_text(json.dumps({"version": "v2.0", "data": [
        {"title": "Normans", "paragraphs": [{"context": CONTEXT, "qas": qas}]}]}))
    a, b = read_squad(lines), read_squad(squad)
    assert [(q.question, q.answers) for q in a] == [(q.question, q.answers) for q in b]
    assert a[1].answers == [("Rollo", CONTEXT.index("Rollo"))]


@pytest.mark.parametrize("row,message", (
    ({**qa("Who?", "Rollo"), "answers": [{"text": "Rollo", "answer_start": 3}]},
     "the answer 'Rollo' is not inside its context at character 3"),
    ({**qa("Who?", "Rollo"), "answers": [{"text": "Rollo"}]}, "an answer must be"),
    ({**qa("Who?", "Rollo"), "question": ""}, "no question"),
    ({"question": "Who?", "answers": []}, "no context"),
))
def test_a_bad_row_names_its_file_and_line(tmp_path, row, message):
    path = tmp_path / "valid.jsonl"
    path.write_text(json.dumps(qa("Where?", "France")) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:2: {re.escape(message)}"):
        read_squad(path)


@pytest.mark.parametrize("kind", ("wordpiece", "spm"))
def test_sub_words_keep_the_characters_they_stand_for(kind):
    tokenizer = wordpiece_tokenizer() if kind == "wordpiece" else train_sentencepiece(
        [CONTEXT] * 20, 60)
    text = "Zürich, naïvely: the  Normans' 10th-century raids!"
    tokens, spans = tokenizer.tokenize_with_offsets(text)
    assert tokens == tokenizer.tokenize([text])[0]
    assert all(0 <= a <= b <= len(text) for a, b in spans)  # spm: '▁' alone may be empty
    assert [a for a, _ in spans] == sorted(a for a, _ in spans)
    if kind == "wordpiece":  # lower-cased, accents stripped: the text the token stands for
        assert [text[a:b].lower().replace("ü", "u").replace("ï", "i") for a, b in spans] == [
            t.removeprefix("##") for t in tokens]


def test_windows_overlap_by_the_stride_and_every_answer_is_whole_in_one():
    tokenizer = wordpiece_tokenizer()
    question = Question("Who agreed to swear fealty?", CONTEXT * 3,
                        [("Rollo", CONTEXT.index("Rollo") + 2 * len(CONTEXT))], "test")
    asked, parts, starts, golds = windows(question, tokenizer, max_tokens=40, stride=16,
                                          max_question_tokens=64)
    tokens, spans = tokenizer.tokenize_with_offsets(question.context)
    size = 40 - len(asked)
    assert starts == list(range(0, 16 * len(starts), 16)) and starts[-1] + size >= len(tokens)
    assert [len(p) for p in parts[:-1]] == [size] * (len(parts) - 1)
    assert all(p == tokens[s:s + size] for p, s in zip(parts, starts))
    [(first, last)] = golds
    assert question.context[spans[first][0]:spans[last][1]] == "Rollo"
    assert any(s <= first and last < s + size for s in starts)
    with pytest.raises(ValueError, match="fewer than the stride"):
        windows(question, tokenizer, max_tokens=20, stride=16, max_question_tokens=64)


def test_bundled_disflqa_is_its_extractive_questions_split_by_passage():
    splits = disflqa_questions()
    assert {s: len(q) for s, q in splits.items()} == {"train": 467, "valid": 80, "test": 53}
    passages = {s: {q.context for q in qs} for s, qs in splits.items()}
    assert not passages["train"] & (passages["valid"] | passages["test"])
    for question in (q for qs in splits.values() for q in qs):
        assert all(question.context[s:s + len(t)] == t for t, s in question.answers)


def test_the_directory_holds_windows_with_their_gold_spans(tmp_path):
    rows = {"train": [qa("Who led them?", "Rollo"), qa("Where is Normandy?", "France")],
            "valid": [qa("Who was king?", "Charles III")], "test": [qa("Raiders from?", "Norse")]}
    files = {}
    for split, split_rows in rows.items():
        files[split] = tmp_path / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(r) + "\n" for r in split_rows))
    out = tmp_path / "data"
    sizes = prepare_span_qa(out, files, wordpiece_tokenizer(), max_tokens=30, stride=8)
    raw = lambda column: (out / "raw" / f"train.{column}").read_text().splitlines()[0]  # noqa: E731
    assert sizes == {"train": 2, "valid": 1, "test": 1}
    labels = (out / "label" / "train.label").read_text().splitlines()
    windows_of = [int(line.split()[0]) for line in labels]
    assert windows_of == sorted(windows_of) and set(windows_of) == {0, 1}
    contexts = (out / "raw" / "train.input1").read_text().splitlines()
    holding = 0  # windows of the first question that hold its answer
    for line, context in zip(labels, contexts):
        index, offset, first, last = map(int, line.split())
        inside = 0 <= first - offset and last - offset < len(context.split())
        if inside and index == 0:
            answer = context.split()[first - offset:last - offset + 1]
            assert "".join(t.removeprefix("##") for t in answer) == "rollo"
            holding += 1
    assert holding >= 1
    assert all((out / d / "dict.txt").is_file() for d in ("input0", "input1"))
    # read back as the model reads them (omoe-analyze, split upcycling): question and window
    words = Dictionary.load(str(out / "input0" / "dict.txt"))
    batch = leading_sentences(out, "train", words, max_tokens=10_000, max_positions=20)
    first = [words.bos(), *(words.index(t) for t in f"{raw('input0')} </s>".split()),
             *(words.index(t) for t in f"{raw('input1')} </s>".split())]
    assert batch.shape == (len(labels), 20) and batch[0].tolist() == first[:20]
    files["test"].write_text(json.dumps({**qa("Who?", "Rollo"), "answers": [
        {"text": "Rollo", "answer_start": 0}]}) + "\n")
    with pytest.raises(ValueError, match="not inside its context"):
        prepare_span_qa(out, files, wordpiece_tokenizer(), max_tokens=30, stride=8)
    assert (out / "label" / "train.label").read_text().splitlines() == labels  # kept whole


def test_a_truncated_squad_file_is_named_where_its_json_breaks(tmp_path):
    squad = json.dumps({"version": "v1.1", "data": [{"title": "Normans", "paragraphs": [
        {"context": CONTEXT, "qas": [{"id": "1", **qa("Who led them?", "Rollo")}]}]}]},
        indent=2)
    path = tmp_path / "train.json"
    path.write_text(squad[:len(squad) // 2])  # a copy cut off half way
    lines = path.read_text().split("\n")
    with pytest.raises(ValueError, match=rf"train.json:{len(lines)}:{len(lines[-1]) + 1}: not "
                                         r"valid JSON \("):
        read_squad(path)


def test_long_texts_refuse_stops_at_a_context_that_needs_windows(tmp_path):
    files = {}
    for split in ("train", "valid", "test"):
        files[split] = tmp_path / f"{split}.jsonl"
        files[split].write_text(json.dumps(qa("Who led them?", "Rollo")) + "\n")
    with pytest.raises(ValueError, match=rf"train.jsonl:1: the QA example is \d+ sub-words, more "
                                         r"than the 30 that fit \(--max-tokens 31 less the </s> "
                                         r"after the question\)"):
        prepare_span_qa(tmp_path / "data", files, wordpiece_tokenizer(), max_tokens=30,
                        stride=8, long_texts="refuse")
    assert not (tmp_path / "data").exists()


def test_an_answer_outside_its_context_stops_preparation_with_file_and_line(tmp_path):
    good = {"question": "Where?", "context": "In France.",
            "answers": [{"text": "France", "answer_start": 3}]}
    bad = {**good, "answers": [{"text": "France", "answer_start": 0}]}
    files = []
    for split, rows in (("train", [good, bad]), ("valid", [good]), ("test", [good])):
        files += [f"--{split}", str(tmp_path / f"{split}.jsonl")]
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SystemExit, match=re.escape(f"{tmp_path / 'train.jsonl'}:2: the answer "
                                                   "'France' is not inside its context")):
        prepare_main([str(tmp_path / "out"), "--format", "squad", *files])
    assert not (tmp_path / "out").exists()
