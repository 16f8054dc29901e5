"""`OMoEClassifier`: classes (or a regression value) for sentences and sentence pairs from an
omoe-export ONNX model of a sentence-prediction checkpoint, on ONNX Runtime.

A sentence becomes `<s> tokens </s>` as in training; a pair `<s> A </s> [separator] B </s>`,
as the task joined them. One longer than the model's positions keeps its first
max_positions - 1 ids and its closing </s>, and its result is marked "truncated"."""

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np

from .runtime import ServedModel, softmax, text_problem

Text = Union[str, tuple[str, str]]  # one sentence, or a sentence pair


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


class OMoEClassifier(ServedModel):
    """Sentence classification with a model written by omoe-export.

        classifier = OMoEClassifier("model.onnx", threads=2)
        classifier.predict(["a gripping, funny film", "dull and far too long"])
    """

    kind = "sentences"

    def encode(self, sentence: Text) -> tuple[list[int], bool]:
        """Model ids of one sentence or pair, and whether it was truncated."""
        return self.encode_batch([sentence])[0]

    def problem(self, sentence) -> Optional[str]:
        if not self.info.pairs:
            if isinstance(sentence, (tuple, list)):
                return "this model classifies single sentences: give one text, not a pair"
            return text_problem(sentence)
        if not isinstance(sentence, (tuple, list)) or len(sentence) != 2:
            return "this model classifies sentence pairs: give (text, text_pair)"
        return text_problem(sentence[0], "first text") or text_problem(sentence[1], "second text")

    def encode_batch(self, sentences: Sequence[Text]) -> list[tuple[list[int], bool]]:
        """encode for many sentences or pairs at once (tokenised in parallel); raises
        ValueError naming the first one that is no usable sentence (or pair) for this
        model."""
        for i, sentence in enumerate(sentences):
            problem = self.problem(sentence)
            if problem:
                raise ValueError(f"sentence {i}: {problem}")
        info = self.info
        parts = [[s] if isinstance(s, str) else list(s) for s in sentences]
        tokens = iter(self.tokenizer.tokenize([t for texts in parts for t in texts]))
        separator = [] if info.separator is None else [info.separator]
        encoded = []
        for texts in parts:
            ids = [info.bos]
            for n in range(len(texts)):
                ids += separator if n else []
                ids += self.ids(next(tokens)) + [info.eos]
            too_long = len(ids) > info.max_positions
            encoded.append((ids[:info.max_positions - 1] + [info.eos] if too_long else ids,
                            too_long))
        return encoded

    def answer(self, sentences: list[Text], batch_size: int) -> list[Prediction]:
        """One Prediction per sentence (or pair: a tuple of two texts), in order (a truncated
        one's is marked so)."""
        encoded = self.encode_batch(sentences)
        logits = self.logits([ids for ids, _ in encoded], batch_size)
        return [self._prediction(out, truncated) for out, (_, truncated) in zip(logits, encoded)]

    def _prediction(self, logits: np.ndarray, truncated: bool) -> Prediction:
        if self.info.regression:
            return Prediction(None, None, float(logits[0]), truncated)
        probs = softmax(logits)
        return Prediction(self.labels[int(probs.argmax())],
                          {label: float(p) for label, p in zip(self.labels, probs)},
                          None, truncated)
