"""`omoe-infer MODEL [INPUT]` and `OMoEClassifier`: classify sentences with an omoe-export
ONNX model on ONNX Runtime, tokenised with the tokenizer stored in the model.

A sentence becomes `<s> tokens </s>` as in training. One longer than the model's positions
keeps its first max_positions - 2 tokens (a warning says so and its result is marked
"truncated"). The command line reads one sentence per line and writes one JSON object per
line, in input order; a line that cannot be classified (empty, not UTF-8) gets an "error"
object and the other lines their results. A model fine-tuned on sentence pairs reads
`text<TAB>text_pair` lines (`predict([(text, text_pair), ...])` from Python), joined as the
task joined them in training.
"""

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Optional, Sequence, TextIO, Union

import numpy as np
import onnxruntime as ort

from ..data.subword import SubwordTokenizer
from .serving_info import ServingInfo

logger = logging.getLogger(__name__)
Text = Union[str, tuple[str, str]]  # one sentence, or a sentence pair

OPTIMIZATION_LEVELS = {  # --optimization-level -> ONNX Runtime's setting
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


# ONNX Runtime 1.32's CPU SkipLayerNormalization kernel, which its optimiser fuses every
# residual Add + LayerNormalization into, measured 20x slower in fp32 than the two unfused
# kernels on [4096, 384] (7.2 ms against 0.36 ms; 10-12 % of a whole forward): keep them apart.
DISABLED_FUSIONS = ["SkipLayerNormFusion"]


def session(path: Path, threads: int = 0, level: str = "all") -> ort.InferenceSession:
    """An ONNX Runtime CPU session; threads 0 lets ONNX Runtime choose; a clear error for a
    file that is missing or not an ONNX model."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model at {path}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = OPTIMIZATION_LEVELS[level]
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=DISABLED_FUSIONS)
    except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own untyped errors
        raise ValueError(f"{path} is not a loadable ONNX model (truncated?): "
                         f"{str(e).splitlines()[0]}") from None


@dataclass
class Prediction:
    label: Optional[str]  # the most probable class (None for a regression model)
    probabilities: Optional[dict[str, float]]  # per class (None for a regression model)
    value: Optional[float]  # the regression output (None for a classifier)
    truncated: bool  # the sentence was longer than the model's positions

    def to_json(self) -> dict:
        out = {"value": self.value} if self.label is None else {
            "label": self.label, "probabilities": self.probabilities}
        return {**out, "truncated": True} if self.truncated else out


class OMoEClassifier:
    """Sentence classification with a model written by omoe-export.

        classifier = OMoEClassifier("model.onnx", threads=2)
        classifier.predict(["a gripping, funny film", "dull and far too long"])
    """

    def __init__(self, model: Path, threads: int = 0, optimization_level: Optional[str] = None):
        self.session = session(model, threads, optimization_level or "all")
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.info = ServingInfo.from_metadata(metadata, model)
        if optimization_level is None and self.info.optimization_level != "all":
            self.session = session(model, threads, self.info.optimization_level)
        self.tokenizer = SubwordTokenizer.from_text(self.info.tokenizer_kind, self.info.tokenizer)
        self.index = {symbol: i for i, symbol in enumerate(self.info.symbols)}

    @property
    def labels(self) -> list[str]:
        return self.info.labels

    def encode(self, sentence: Text) -> tuple[list[int], bool]:
        """Model ids of one sentence (`<s> ... </s>`) or pair (`<s> A </s> [separator] B
        </s>`, as the task joined them in training) and whether it was truncated."""
        return self.encode_batch([sentence])[0]

    def encode_batch(self, sentences: Sequence[Text]) -> list[tuple[list[int], bool]]:
        """encode for many sentences or pairs at once (tokenised in parallel); raises
        ValueError naming the first empty text, or a pair given to a single-sentence model
        and the other way round. Too long an input keeps its first max_positions - 1 ids
        and its closing </s>."""
        info = self.info
        parts = [[s] if isinstance(s, str) else list(s) for s in sentences]
        for i, texts in enumerate(parts):
            if (len(texts) == 2) != info.pairs:
                raise ValueError(f"sentence {i}: this model classifies "
                                 + ("sentence pairs: give (text, text_pair)" if info.pairs
                                    else "single sentences: give one text, not a pair"))
            if not all(t.strip() for t in texts):
                raise ValueError(f"sentence {i} is empty")
        tokens = iter(self.tokenizer.tokenize([t for texts in parts for t in texts]))
        separator = [] if info.separator is None else [info.separator]
        encoded = []
        for texts in parts:
            ids = [info.bos]
            for n in range(len(texts)):
                ids += separator if n else []
                ids += [self.index.get(t, info.unk) for t in next(tokens)] + [info.eos]
            too_long = len(ids) > info.max_positions
            encoded.append((ids[:info.max_positions - 1] + [info.eos] if too_long else ids,
                            too_long))
        return encoded

    def predict(self, sentences: Sequence[Text], batch_size: int = 32) -> list[Prediction]:
        """One Prediction per sentence (or pair: a tuple of two texts), in order (a truncated
        one's is marked so). Sentences are batched by length to keep padding low. Raises
        ValueError naming the first empty sentence."""
        if self.info.tagging or self.info.span_qa:
            server = "OMoETagger" if self.info.tagging else "OMoEReader"
            raise ValueError(f"this model does not classify sentences: serve it with "
                             f"omoe_plugin.export.{server}")
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        encoded = self.encode_batch(sentences)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
        outputs: list[Optional[np.ndarray]] = [None] * len(encoded)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            tokens = np.full((len(chunk), max(len(encoded[i][0]) for i in chunk)),
                             self.info.pad, dtype=np.int64)
            for row, i in enumerate(chunk):
                tokens[row, :len(encoded[i][0])] = encoded[i][0]
            logits = self.session.run(["logits"], {"src_tokens": tokens})[0]
            for row, i in enumerate(chunk):
                outputs[i] = logits[row]
        return [self._prediction(out, truncated) for out, (_, truncated) in zip(outputs, encoded)]

    def _prediction(self, logits: np.ndarray, truncated: bool) -> Prediction:
        if self.info.regression:
            return Prediction(None, None, float(logits[0]), truncated)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        return Prediction(self.labels[int(probs.argmax())],
                          {label: float(p) for label, p in zip(self.labels, probs)},
                          None, truncated)


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


def classify_stream(classifier: OMoEClassifier, stream: BinaryIO, out: TextIO,
                    batch_size: int) -> int:
    """Write one JSON line per input line to out; returns how many lines failed. classifier:
    an OMoEClassifier, or an OMoETagger (whose results are the entities)."""
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
                if predictions[number].truncated:
                    logger.warning(f"line {number}: longer than the model's "
                                   f"{classifier.info.max_positions} positions, truncated")
                record = {"line": number, **predictions[number].to_json()}
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
        classifier = OMoEClassifier(args.model, args.threads, args.optimization_level)
        if classifier.info.tagging:
            from .tagger import OMoETagger

            classifier = OMoETagger(args.model, args.threads, args.optimization_level)
        elif classifier.info.span_qa:
            from .reader import OMoEReader

            classifier = OMoEReader(args.model, args.threads, args.optimization_level)
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
