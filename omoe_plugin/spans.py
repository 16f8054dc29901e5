"""Extractive QA's windows and answer spans: where a long context's windows start, and the best
span of one window's start and end logits. Shared by data preparation, the `omoe_span_qa`
criterion's metrics and serving (`OMoEReader`), so all three cut and pick alike; numpy only
(serving loads neither torch nor fairseq)."""

import numpy as np


def best_span(start: np.ndarray, end: np.ndarray, first: int, length: int,
              max_answer: int) -> tuple[float, int, int]:
    """start / end [T]: one window's logits, its context at positions [first, first + length).
    The span [i, j] inside the context of at most max_answer positions with the highest
    start[i] + end[j]: (that score, i, j)."""
    scores = start[first:first + length, None] + end[None, first:first + length]  # [L, L]
    i, j = np.indices(scores.shape)
    scores = np.where((j >= i) & (j - i < max_answer), scores, -np.inf)
    i, j = divmod(int(scores.argmax()), length)
    return float(scores[i, j]), first + i, first + j


def window_starts(length: int, size: int, stride: int) -> list[int]:
    """The first sub-word of each window of `size` sub-words over a context of `length`,
    `stride` apart, the last one reaching the context's end (contexts longer than the model's
    positions are read in such overlapping windows, in training as in serving). A window
    narrower than the stride would skip sub-words: a ValueError."""
    if size < stride:
        raise ValueError(f"a window holds {size} context sub-words beside the question, fewer "
                         f"than the stride {stride}")
    starts = [0]
    while starts[-1] + size < length:
        starts.append(starts[-1] + stride)
    return starts
