"""`OMoEReader`: answers, with character offsets in the context, from an omoe-export ONNX model
of a `--task omoe_span_qa` checkpoint, on ONNX Runtime.

A question and its context are joined and windowed as `omoe-prepare-data --format squad`
does: `<s> question </s> window </s>`, the question's first `max_question_tokens` sub-words,
the context cut into windows of what the positions leave, `stride` sub-words between window
starts. The answer is the span of at most the model's max_answer_tokens sub-words with the
highest start + end logit over all windows (`omoe_plugin.spans`, as validation scores it),
returned as the context characters its sub-words cover.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..spans import best_span, window_starts
from .inference import OMoEClassifier


@dataclass
class Answer:
    text: str  # the context's characters [start, end)
    start: int
    end: int
    score: float  # probability of its start times that of its end, in its window
    truncated: bool = False  # never: long contexts are read in windows

    def to_json(self) -> dict:
        return {"answer": self.text, "start": self.start, "end": self.end, "score": self.score}


class OMoEReader(OMoEClassifier):
    """Extractive question answering with a model written by omoe-export from a span-QA
    checkpoint.

        reader = OMoEReader("qa.onnx")
        reader.predict([("Who wrote it?", "The book was written by Ann Lee in 1990.")])[0].text
    """

    def __init__(self, model: Path, threads: int = 0, optimization_level: Optional[str] = None):
        super().__init__(model, threads, optimization_level)
        if not self.info.span_qa:
            raise ValueError(f"{model} is not an extractive-QA model: serve it with "
                             + ("OMoETagger" if self.info.tagging else "OMoEClassifier"))

    def predict(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32, stride: int = 64,
                max_question_tokens: int = 64) -> list[Answer]:
        """One Answer per (question, context), in order; raises ValueError naming the first
        pair that is not two non-empty texts."""
        if min(batch_size, stride, max_question_tokens) < 1:
            raise ValueError("batch size, stride and question sub-words must be >= 1")
        windows, contexts = [], []  # windows: (pair, ids, first, offset, length)
        for i, pair in enumerate(pairs):
            if isinstance(pair, str) or len(pair) != 2 or not all(t.strip() for t in pair):
                raise ValueError(f"pair {i}: give (question, context), two non-empty texts")
            tokens, offsets = self.tokenizer.tokenize_with_offsets(pair[1])
            if not tokens:
                raise ValueError(f"pair {i}: the context has no sub-words")
            try:
                windows += [(i, *w) for w in self.windows(pair[0], tokens, stride,
                                                          max_question_tokens)]
            except ValueError as e:
                raise ValueError(f"pair {i}: {e}") from None
            contexts.append((pair[1], offsets))
        best: list[Optional[tuple[float, int, int, float]]] = [None] * len(contexts)
        for start in range(0, len(windows), batch_size):
            chunk = windows[start:start + batch_size]
            tokens = np.full((len(chunk), max(len(w[1]) for w in chunk)), self.info.pad,
                             dtype=np.int64)
            for row, (_, ids, _, _, _) in enumerate(chunk):
                tokens[row, :len(ids)] = ids
            logits = self.session.run(["logits"], {"src_tokens": tokens})[0]  # [B, T, 2]
            for row, (i, ids, first, offset, length) in enumerate(chunk):
                start_logits, end_logits = logits[row, :len(ids), 0], logits[row, :len(ids), 1]
                score, a, b = best_span(start_logits, end_logits, first, length,
                                        self.info.max_answer_tokens)
                if best[i] is None or score > best[i][0]:
                    probability = _softmax(start_logits)[a] * _softmax(end_logits)[b]
                    best[i] = (score, a - first + offset, b - first + offset, float(probability))
        answers = []
        for (context, offsets), (_, a, b, probability) in zip(contexts, best):
            begin, end = offsets[a][0], offsets[b][1]
            while begin < end and context[begin].isspace():  # sentencepiece's '▁' spans a space
                begin += 1
            answers.append(Answer(context[begin:end], begin, end, round(probability, 4)))
        return answers

    def windows(self, question: str, context: list[str], stride: int = 64,
                max_question_tokens: int = 64) -> list[tuple[list[int], int, int, int]]:
        """A question and its context's sub-words as the model reads them: per window, (model
        ids `<s> question </s> window </s>`, the window's first position, its first context
        sub-word, its number of context sub-words)."""
        asked = self._ids(self.tokenizer.tokenize([question])[0][:max_question_tokens])
        size = self.info.max_positions - 3 - len(asked)  # context sub-words a window holds
        head, ids = [self.info.bos, *asked, self.info.eos], self._ids(context)
        return [(head + ids[s:s + size] + [self.info.eos], len(head), s, len(ids[s:s + size]))
                for s in window_starts(len(ids), size, stride)]

    def _ids(self, tokens: list[str]) -> list[int]:
        return [self.index.get(t, self.info.unk) for t in tokens]


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max())
    return exp / exp.sum()
