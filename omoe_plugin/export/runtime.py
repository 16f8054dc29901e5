"""What every served model shares: its one ONNX Runtime session, its serving metadata and
tokenizer, and the pad-and-run loop (`ServedModel`, the base of `OMoEClassifier`,
`OMoETagger` and `OMoEReader`); `load_model` in `inference` picks the class from the file."""

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import onnxruntime as ort

from ..data.subword import SubwordTokenizer
from .serving_info import ServingInfo

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

# each kind of model (ServingInfo.kind): its serving class and its name, for messages
SERVERS = {"sentences": ("OMoEClassifier", "sentence-classification"),
           "tagging": ("OMoETagger", "token-tagging"), "span_qa": ("OMoEReader", "extractive-QA")}


def session(path: Path, threads: int = 0, level: str = "all",
            spinning: bool = True) -> ort.InferenceSession:
    """An ONNX Runtime CPU session; threads 0 lets ONNX Runtime choose; a clear error for a
    file that is missing or not an ONNX model. spinning: the intra-op threads spin between
    runs (ONNX Runtime's default: a run starts sooner) rather than sleep (the cores stay free
    for the other threads of the process, such as a server's event loop)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model at {path}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = OPTIMIZATION_LEVELS[level]
    options.add_session_config_entry("session.intra_op.allow_spinning", str(int(spinning)))
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=DISABLED_FUSIONS)
    except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own untyped errors
        raise ValueError(f"{path} is not a loadable ONNX model (truncated?): "
                         f"{str(e).splitlines()[0]}") from None


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return exp / exp.sum(axis=axis, keepdims=True)


@dataclass
class Failure:
    """The answer to an item that cannot be answered (its other items are answered)."""

    error: str

    def to_json(self) -> dict:
        return {"error": self.error}


def text_problem(text: Any, what: str = "text") -> Optional[str]:
    """Why `text` is no usable text (not a str, empty, not encodable as UTF-8), or None."""
    if not isinstance(text, str):
        return f"the {what} is {type(text).__name__}, not a str"
    if not text.strip():
        return f"the {what} is empty"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"the {what} is not valid Unicode (a lone surrogate at character {e.start})"
    return None


class ServedModel(ABC):
    """One model written by omoe-export, on one ONNX Runtime session at the optimisation level
    stored at export (or `optimization_level`). Subclasses serve one kind of model (`kind`,
    as ServingInfo.kind names it): `problem` says what is wrong with an item, `answer`
    answers good ones."""

    kind = ""

    def __init__(self, model: Path, threads: int = 0, optimization_level: Optional[str] = None,
                 info: Optional[ServingInfo] = None, spinning: bool = True) -> None:
        """info: the file's ServingInfo when the caller has read it already; spinning: see
        `session`."""
        self.info = info or ServingInfo.read(model)
        if self.info.kind != self.kind:
            raise ValueError(f"{model} is not a {SERVERS[self.kind][1]} model: serve it with "
                             f"omoe_plugin.export.{SERVERS[self.info.kind][0]} (or load_model, "
                             "which picks the class from the file)")
        self.session = session(model, threads, optimization_level or self.info.optimization_level,
                               spinning)
        self.tokenizer = SubwordTokenizer.from_text(self.info.tokenizer_kind, self.info.tokenizer)
        self.index = {symbol: i for i, symbol in enumerate(self.info.symbols)}

    @property
    def labels(self) -> list[str]:
        return self.info.labels

    def predict(self, items: Sequence, batch_size: int = 32) -> list:
        """One answer per item, in order: a Failure, saying why, for an item that cannot be
        answered, so one bad item costs only itself. Raises TypeError for items that are not
        a list (one string is not a list of texts)."""
        if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
            raise TypeError(f"predict takes a list of items, got {type(items).__name__}"
                            + (": wrap one text in a list" if isinstance(items, str) else ""))
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        answers: list = [None] * len(items)
        good = []
        for i, item in enumerate(items):
            problem = self.problem(item)
            if problem is None:
                good.append(i)
            else:
                answers[i] = Failure(problem)
        for i, answer in zip(good, self.answer([items[i] for i in good], batch_size)):
            answers[i] = answer
        return answers

    @abstractmethod
    def problem(self, item: Any) -> Optional[str]:
        """Why this item cannot be answered by this kind of model, or None."""

    @abstractmethod
    def answer(self, items: list, batch_size: int) -> list:
        """One answer per good item (or a Failure found while answering it), in order."""

    def ids(self, tokens: list[str]) -> list[int]:
        """Model ids of sub-word tokens (unknown ones as <unk>)."""
        return [self.index.get(t, self.info.unk) for t in tokens]

    def logits(self, inputs: Sequence[list[int]], batch_size: int) -> list[np.ndarray]:
        """The model's logits for every input (model ids, <s> and </s> included), in order:
        inputs batched by length, so that padding stays low; a per-token model's rows cut to
        the input's length."""
        order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
        out: list[Optional[np.ndarray]] = [None] * len(inputs)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            tokens = np.full((len(chunk), max(len(inputs[i]) for i in chunk)), self.info.pad,
                             dtype=np.int64)
            for row, i in enumerate(chunk):
                tokens[row, :len(inputs[i])] = inputs[i]
            logits = self.session.run(["logits"], {"src_tokens": tokens})[0]
            for row, i in enumerate(chunk):
                out[i] = logits[row] if logits.ndim == 2 else logits[row, :len(inputs[i])]
        return out
