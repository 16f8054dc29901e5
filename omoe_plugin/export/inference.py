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
from pathlib import Path
from typing import BinaryIO, Iterator, Optional, TextIO

from .reader import OMoEReader
from .runtime import OPTIMIZATION_LEVELS, ServedModel
from .sentences import OMoEClassifier
from .serving_info import ServingInfo

logger = logging.getLogger(__name__)


def load_model(model: Path, threads: int = 0,
               optimization_level: Optional[str] = None) -> ServedModel:
    """The served model of an omoe-export file, of the class its metadata names, on one ONNX
    Runtime session."""
    info = ServingInfo.read(model)
    if info.kind == "tagging":  # imported on first use: seqeval (and scikit-learn) load slowly
        from .tagger import OMoETagger

        return OMoETagger(model, threads, optimization_level, info)
    served = OMoEReader if info.kind == "span_qa" else OMoEClassifier
    return served(model, threads, optimization_level, info)


def read_lines(stream: BinaryIO, chunk: int) -> Iterator[list[tuple[int, str | Exception]]]:
    """Numbered lines (from 1) of a byte stream, in chunks: the text, or the error that makes
    the line unusable (empty, not UTF-8)."""
    lines: list[tuple[int, str | Exception]] = []
    for number, raw in enumerate(stream, 1):
        raw = raw.rstrip(b"\r\n")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            lines.append((number, ValueError(f"not valid UTF-8 (byte {raw[e.start]:#04x} at "
                                             f"offset {e.start})")))
        else:
            lines.append((number, text if text.strip() else ValueError("empty line")))
        if len(lines) == chunk:
            yield lines
            lines = []
    if lines:
        yield lines


def pair_of(line: str | Exception) -> tuple[str, str] | Exception:
    """A pair model's input line, `text<TAB>text_pair`, as a pair (or the line's error)."""
    if isinstance(line, Exception):
        return line
    texts = line.split("\t", 1)
    if len(texts) != 2 or not all(t.strip() for t in texts):
        return ValueError("expected two texts separated by a tab (the model classifies pairs)")
    return texts[0], texts[1]


def classify_stream(classifier: ServedModel, stream: BinaryIO, out: TextIO,
                    batch_size: int) -> int:
    """Write one JSON line per input line to out; returns how many lines failed."""
    failed = 0
    for lines in read_lines(stream, chunk=batch_size * 16):
        if classifier.info.pairs:
            lines = [(n, pair_of(text)) for n, text in lines]
        good = [(n, text) for n, text in lines if not isinstance(text, Exception)]
        predictions = dict(zip((n for n, _ in good),
                               classifier.predict([text for _, text in good], batch_size)))
        for number, text in lines:
            if isinstance(text, Exception):
                failed += 1
                logger.warning(f"line {number}: {text}")
                record = {"line": number, "error": str(text)}
            else:
                record = {"line": number, **predictions[number].to_json()}
                if record.get("truncated"):
                    logger.warning(f"line {number}: longer than the model's "
                                   f"{classifier.info.max_positions} positions, truncated")
            out.write(json.dumps(record) + "\n")
    return failed


def cli_main(argv: Optional[list[str]] = None) -> None:
    parser = serving_parser(
        "omoe-infer", "Classify sentences (one per line) with an omoe-export ONNX model on ONNX "
        "Runtime; writes one JSON object per line: {\"line\", \"label\", \"probabilities\"} "
        "(\"value\" for regression; \"entities\", each with its text, type, character "
        "offsets and score, for a token-tagging model; \"answer\" with its character offsets "
        "in the context and its score for an extractive-QA model, whose lines are "
        "question<TAB>context; \"error\" for a line that cannot be "
        "classified).",
        None, "ONNX Runtime graph optimisation level (default: the one stored at export)")
    parser.add_argument("model", type=Path, help="ONNX model written by omoe-export")
    parser.add_argument("input", type=Path, nargs="?", default=None,
                        help="text file, one sentence per line (default: stdin)")
    parser.add_argument("--batch-size", type=at_least(1), default=32, help="sentences per run")
    parser.add_argument("--threads", type=int, default=0,
                        help="ONNX Runtime intra-op threads (0: ONNX Runtime's choice)")
    args = parser.parse_args(argv)
    quiet_logging()
    try:
        classifier = load_model(args.model, args.threads, args.optimization_level)
        stream = open(args.input, "rb") if args.input else sys.stdin.buffer
    except (ValueError, OSError) as e:
        sys.exit(f"omoe-infer: {e}")
    with stream:
        failed = classify_stream(classifier, stream, sys.stdout, args.batch_size)
    if failed:
        logger.warning(f"{failed} line(s) could not be classified (see their \"error\")")


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
