"""`omoe-infer MODEL [INPUT]` and `load_model`: serve an omoe-export ONNX model on ONNX Runtime,
whichever kind it is (`OMoEClassifier`, `OMoETagger`, `OMoEReader`, picked from the file's
metadata), tokenised with the tokenizer stored in the model.

The command line reads one input per line and writes one JSON object per line, in input
order; a line that cannot be answered (empty, not UTF-8) gets an "error" object and the
other lines their results. A model fine-tuned on sentence pairs reads `text<TAB>text_pair`
lines, an extractive-QA model `question<TAB>context` lines.
"""

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from queue import Empty, Queue
from threading import Thread
from typing import Any, BinaryIO, Iterator, Optional, TextIO

from .reader import OMoEReader
from .runtime import OPTIMIZATION_LEVELS, ServedModel
from .sentences import OMoEClassifier
from .serving_info import ServingInfo

logger = logging.getLogger(__name__)


def load_model(model: Path, threads: int = 0, optimization_level: Optional[str] = None,
               spinning: bool = True) -> ServedModel:
    """The served model of an omoe-export file, of the class its metadata names, on one ONNX
    Runtime session (spinning: see runtime.session)."""
    info = ServingInfo.read(model)
    if info.kind == "tagging":  # imported on first use: seqeval (and scikit-learn) load slowly
        from .tagger import OMoETagger

        return OMoETagger(model, threads, optimization_level, info, spinning)
    served = OMoEReader if info.kind == "span_qa" else OMoEClassifier
    return served(model, threads, optimization_level, info, spinning)


def batches(lines: Iterator, size: int, delay: float) -> Iterator[list]:
    """Items of `lines` grouped as they arrive: a group is handed on when it holds `size`
    items, or `delay` seconds after its first item arrived, or at the end: a pipe gets each
    answer without waiting for the lines after it. The reading runs in a thread."""
    queue: Queue = Queue(maxsize=4 * size)
    end = object()

    def read() -> None:
        try:
            for line in lines:
                queue.put(line)
        except Exception as e:  # noqa: BLE001 - handed to the consumer, raised there
            queue.put(e)
        queue.put(end)

    Thread(target=read, daemon=True).start()
    while (item := queue.get()) is not end:
        batch, deadline = [], time.monotonic() + delay
        while True:
            if isinstance(item, Exception):
                raise item
            batch.append(item)
            if len(batch) == size:
                break
            try:
                item = queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except Empty:
                break
            if item is end:
                yield batch
                return
        yield batch


def parse_line(raw: bytes, fields: int, max_chars: int) -> tuple[Any, Optional[str]]:
    """One input line as the model's item (a text, or a pair of texts with `fields` 2), or
    the ValueError that makes it unusable, and a note when a text was cut to `max_chars`."""
    try:
        text = decode_utf8(raw.rstrip(b"\r\n"))
    except ValueError as e:
        return e, None
    if not text.strip():
        return ValueError("empty line"), None
    parts = text.split("\t")
    if len(parts) != fields:
        what = "one text" if fields == 1 else "two texts separated by a tab"
        return ValueError(f"expected {what}, found {len(parts)} tab-separated fields"), None
    return cut_texts(parts, max_chars)


def decode_utf8(raw: bytes) -> str:
    """raw as text; a ValueError naming the first byte that is not UTF-8 (omoe-infer's and
    omoe-serve's message)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not valid UTF-8 (byte {raw[e.start]:#04x} at offset {e.start})") \
            from None


def cut_texts(parts: list[str], max_chars: int) -> tuple[Any, Optional[str]]:
    """The model's item of one input's texts (one text, or a pair as a tuple), each cut to its
    first `max_chars` characters, and a note when one was cut (omoe-infer's lines and
    omoe-serve's requests alike)."""
    cut = [p[:max_chars] for p in parts]
    note = f"cut to its first {max_chars} characters" if cut != parts else None
    return (cut[0] if len(cut) == 1 else tuple(cut)), note


def classify_stream(model: ServedModel, stream: BinaryIO, out: TextIO, batch_size: int,
                    max_delay: float = 0.05, max_chars: int = 20_000) -> int:
    """Write one JSON line per input line to out, each batch as soon as it is answered;
    returns how many lines failed."""
    fields = 2 if model.info.pairs else 1
    failed = 0
    for batch in batches(enumerate(stream, 1), batch_size, max_delay):
        items = [(n, *parse_line(raw, fields, max_chars)) for n, raw in batch]
        good = [(n, item) for n, item, _ in items if not isinstance(item, Exception)]
        answers = dict(zip((n for n, _ in good),
                           model.predict([item for _, item in good], batch_size)))
        for number, item, note in items:
            record = {"line": number, **(answers[number].to_json() if number in answers
                                         else {"error": str(item)})}
            if note:
                record["note"] = note
            if "error" in record:
                failed += 1
                logger.warning(f"line {number}: {record['error']}")
            elif record.get("truncated"):
                logger.warning(f"line {number}: longer than the model's "
                               f"{model.info.max_positions} positions, truncated")
            out.write(json.dumps(record) + "\n")
        out.flush()
    return failed


def cli_main(argv: Optional[list[str]] = None) -> None:
    parser = serving_parser(
        "omoe-infer", "Classify sentences (one per line) with an omoe-export ONNX model on ONNX "
        "Runtime; writes one JSON object per line: {\"line\", \"label\", \"probabilities\"} "
        "(\"value\" for regression; \"entities\", each with its text, type, character "
        "offsets and score, for a token-tagging model; \"answer\" with its character offsets "
        "in the context and its score for an extractive-QA model, whose lines are "
        "question<TAB>context; \"error\" for a line that cannot be "
        "classified). Lines are answered as they arrive, so it can sit behind a pipe; the "
        "exit status is 1 when any line failed (see --exit-zero).",
        None, "ONNX Runtime graph optimisation level (default: the one stored at export)")
    parser.add_argument("model", type=Path, help="ONNX model written by omoe-export")
    parser.add_argument("input", type=Path, nargs="?", default=None,
                        help="text file, one sentence per line (default: stdin)")
    parser.add_argument("--batch-size", type=at_least(1), default=32, help="sentences per run")
    parser.add_argument("--threads", type=int, default=0,
                        help="ONNX Runtime intra-op threads (0: ONNX Runtime's choice)")
    parser.add_argument("--max-delay-ms", type=at_least(0), default=50,
                        help="longest wait for more lines before answering the ones read "
                        "(a batch is answered when full or this long after its first line)")
    parser.add_argument("--max-chars", type=at_least(1), default=20_000,
                        help="characters kept of each text of a line; a longer text is cut "
                        "and its record says so in \"note\"")
    parser.add_argument("--exit-zero", action="store_true",
                        help="exit 0 even when lines failed (their records hold \"error\")")
    args = parser.parse_args(argv)
    quiet_logging()
    try:
        classifier = load_model(args.model, args.threads, args.optimization_level)
        stream = open(args.input, "rb") if args.input else sys.stdin.buffer
    except (ValueError, OSError) as e:
        sys.exit(f"omoe-infer: {e}")
    with stream:
        failed = classify_stream(classifier, stream, sys.stdout, args.batch_size,
                                 args.max_delay_ms / 1000, args.max_chars)
    if failed:
        logger.warning(f"{failed} line(s) could not be classified (see their \"error\")")
        if not args.exit_zero:
            sys.exit(1)


def at_least(minimum: int):
    """An argparse type: an integer >= minimum."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def serving_parser(prog: str, description: str, level: Optional[str],
                   level_help: str) -> argparse.ArgumentParser:
    """The serving CLIs' parser, with their shared --optimization-level (default `level`)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--optimization-level", choices=OPTIMIZATION_LEVELS, default=level,
                        help=level_help)
    return parser


def quiet_logging() -> None:
    """Our messages at INFO, everyone else's (fairseq, onnxscript, the quantiser, which logs
    every tensor on the root logger) at WARNING."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s", force=True)
    logging.getLogger("omoe_plugin").setLevel(logging.INFO)
