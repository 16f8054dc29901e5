"""What one served model takes and gives over HTTP: its input and output tensors (the v2
metadata), a request's texts checked and cut as omoe-infer cuts its lines, and its answers as
omoe-infer's records and as output tensors."""

import json
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np

from ..export.inference import cut_texts, decode_utf8
from ..export.runtime import ServedModel
from .errors import bad_request

MAX_LISTED = 5  # bad items named in one 400 answer
VERSION = "1"  # each name serves one file: its only version


@dataclass
class Tensor:
    """One output tensor: BYTES data as a list of str, FP32 data as a float32 array."""

    name: str
    datatype: str
    shape: list[int]
    data: Union[list[str], np.ndarray]


class ModelSpec:
    """A model served under `name`: one BYTES input per text of an item ("text"; a pair
    model's "text" and "text_pair"; a reader's "question" and "context"), the output "result"
    (each item's omoe-infer record as JSON) and, for a classifier, "label" and
    "probabilities" [n, classes] (for a regression model "value" [n])."""

    def __init__(self, name: str, model: ServedModel, max_chars: int) -> None:
        self.name, self.model, self.max_chars = name, model, max_chars
        info = model.info
        self.inputs = (("question", "context") if info.kind == "span_qa"
                       else ("text", "text_pair") if info.pairs else ("text",))
        sentences = info.kind == "sentences"
        self.classes = info.labels if sentences and not info.regression else []
        self.regression = sentences and info.regression

    def outputs(self) -> list[tuple[str, str, list[int]]]:
        """(name, datatype, shape) of every output; -1: the number of items."""
        out = [("result", "BYTES", [-1])]
        if self.classes:
            out += [("label", "BYTES", [-1]), ("probabilities", "FP32", [-1, len(self.classes)])]
        if self.regression:
            out.append(("value", "FP32", [-1]))
        return out

    def metadata(self) -> dict:
        """The v2 model metadata response."""
        return {"name": self.name, "versions": [VERSION], "platform": "onnxruntime",
                "inputs": [{"name": n, "datatype": "BYTES", "shape": [-1]} for n in self.inputs],
                "outputs": [{"name": n, "datatype": d, "shape": s} for n, d, s in self.outputs()]}

    def example(self) -> Any:
        """An item to warm the session up with before the first request."""
        return "warm up" if len(self.inputs) == 1 else ("warm up", "warm up")

    def items(self, columns: list[list]) -> tuple[list, list[Optional[str]]]:
        """The model's items of a request's texts (one list per input, in `inputs` order, of
        str or UTF-8 bytes) and each one's note (a text cut to max_chars, as omoe-infer cuts
        a line). Raises a 400 Problem naming the items that cannot be answered (not a
        string, not UTF-8, empty, a lone surrogate): a request is answered whole or not."""
        items, notes, problems = [], [], []
        for i, texts in enumerate(zip(*columns)):
            try:
                item, note = cut_texts([self._text(t) for t in texts], self.max_chars)
                problem = self.model.problem(item)
            except ValueError as e:
                problem = str(e)
            if problem:
                problems.append(f"item {i}: {problem}")
            else:
                items.append(item)
                notes.append(note)
        if problems:
            more = len(problems) - MAX_LISTED
            raise bad_request(f"{len(problems)} of {len(columns[0])} items cannot be answered: "
                              + "; ".join(problems[:MAX_LISTED])
                              + (f"; and {more} more" if more > 0 else ""))
        return items, notes

    @staticmethod
    def _text(value: Any) -> str:
        if isinstance(value, bytes):
            return decode_utf8(value)
        if not isinstance(value, str):
            raise ValueError(f"not a string but {type(value).__name__}")
        return value

    @staticmethod
    def record(answer: Any, note: Optional[str]) -> dict:
        """An answer as omoe-infer writes it, without "line" (a Failure: {"error"})."""
        out = answer.to_json()
        return {**out, "note": note} if note else out

    def tensors(self, answers: list, notes: list[Optional[str]]) -> dict[str, Tensor]:
        """Every output of the answers to n items, by name."""
        n = len(answers)
        records = [json.dumps(self.record(a, note)) for a, note in zip(answers, notes)]
        out = {"result": Tensor("result", "BYTES", [n], records)}
        if self.classes:
            out["label"] = Tensor("label", "BYTES", [n], [a.label for a in answers])
            probabilities = np.array([[a.probabilities[c] for c in self.classes] for a in answers],
                                     dtype=np.float32).reshape(n, len(self.classes))
            out["probabilities"] = Tensor("probabilities", "FP32", [n, len(self.classes)],
                                          probabilities)
        if self.regression:
            out["value"] = Tensor("value", "FP32", [n],
                                  np.array([a.value for a in answers], dtype=np.float32))
        return out
