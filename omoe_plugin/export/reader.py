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
from typing import Optional

from ..spans import best_span, window_starts
from .runtime import Failure, ServedModel, softmax, text_problem


@dataclass
class Answer:
    text: str  # the context's characters [start, end)
    start: int
    end: int
    score: float  # probability of its start times that of its end, in its window

    def to_json(self) -> dict:
        return {"answer": self.text, "start": self.start, "end": self.end, "score": self.score}


class OMoEReader(ServedModel):
    """Extractive question answering with a model written by omoe-export from a span-QA
    checkpoint.

        reader = OMoEReader("qa.onnx")
        reader.predict([("Who wrote it?", "The book was written by Ann Lee in 1990.")])[0].text
    """

    kind = "span_qa"

    def __init__(self, model: Path, threads: int = 0, optimization_level: Optional[str] = None,
                 info=None, spinning: bool = True, *, stride: int = 64,
                 max_question_tokens: int = 64) -> None:
        """stride: context sub-words between window starts; max_question_tokens: a
        question's sub-words kept (as omoe-prepare-data's --doc-stride and
        --max-question-tokens)."""
        if min(stride, max_question_tokens) < 1:
            raise ValueError("stride and question sub-words must be >= 1")
        super().__init__(model, threads, optimization_level, info, spinning)
        self.stride, self.max_question_tokens = stride, max_question_tokens

    def problem(self, pair) -> Optional[str]:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            return "give (question, context), two texts"
        return text_problem(pair[0], "question") or text_problem(pair[1], "context")

    def answer(self, pairs: list[tuple[str, str]], batch_size: int) -> list[Answer | Failure]:
        """One Answer per (question, context), in order (a Failure for a context without
        sub-words, or a question that leaves a window no room)."""
        windows, contexts = [], []  # windows: (pair, ids, first, offset, length)
        failures: dict[int, Failure] = {}
        for i, (question, context) in enumerate(pairs):
            tokens, offsets = self.tokenizer.tokenize_with_offsets(context)
            try:
                if not tokens:
                    raise ValueError("the context has no sub-words")
                windows += [(i, *w) for w in self.windows(question, tokens)]
            except ValueError as e:
                failures[i] = Failure(str(e))
            contexts.append((context, offsets))
        best: list[Optional[tuple[float, int, int, float]]] = [None] * len(contexts)
        logits = self.logits([w[1] for w in windows], batch_size)  # each [T, 2]
        for (i, _, first, offset, length), window_logits in zip(windows, logits):
            start_logits, end_logits = window_logits[:, 0], window_logits[:, 1]
            score, a, b = best_span(start_logits, end_logits, first, length,
                                    self.info.max_answer_tokens)
            if best[i] is None or score > best[i][0]:
                probability = softmax(start_logits)[a] * softmax(end_logits)[b]
                best[i] = (score, a - first + offset, b - first + offset, float(probability))
        answers = []
        for i, ((context, offsets), found) in enumerate(zip(contexts, best)):
            if i in failures:
                answers.append(failures[i])
                continue
            _, a, b, probability = found
            begin, end = offsets[a][0], offsets[b][1]
            while begin < end and context[begin].isspace():  # sentencepiece's '▁' spans a space
                begin += 1
            answers.append(Answer(context[begin:end], begin, end, round(probability, 4)))
        return answers

    def windows(self, question: str, context: list[str]) -> list[tuple[list[int], int, int, int]]:
        """A question and its context's sub-words as the model reads them: per window, (model
        ids `<s> question </s> window </s>`, the window's first position, its first context
        sub-word, its number of context sub-words)."""
        asked = self.ids(self.tokenizer.tokenize([question])[0][:self.max_question_tokens])
        size = self.info.max_positions - 3 - len(asked)  # context sub-words a window holds
        head, ids = [self.info.bos, *asked, self.info.eos], self.ids(context)
        return [(head + ids[s:s + size] + [self.info.eos], len(head), s, len(ids[s:s + size]))
                for s in window_starts(len(ids), size, self.stride)]
