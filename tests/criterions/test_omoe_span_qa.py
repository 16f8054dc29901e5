"""Span QA: the best span against brute force, the window targets, and exact match / F1 per
question over its windows, against values worked out by hand."""

import itertools

import numpy as np
import pytest
import torch

from omoe_plugin.criterions.omoe_span_qa import BestSpans, overlap_f1, window_spans
from omoe_plugin.spans import best_span
from omoe_plugin.tasks.omoe_span_qa import window_targets


@pytest.mark.parametrize("length,first,context,max_answer", ((12, 3, 8, 3), (20, 5, 15, 30),
                                                              (6, 2, 1, 4)))
def test_best_span_is_the_brute_force_best(length, first, context, max_answer):
    rng = np.random.default_rng(length)
    start, end = rng.normal(size=length), rng.normal(size=length)
    candidates = [(start[i] + end[j], i, j)
                  for i, j in itertools.product(range(first, first + context), repeat=2)
                  if 0 <= j - i < max_answer]
    score, i, j = best_span(start, end, first, context, max_answer)
    assert (score, i, j) == pytest.approx(max(candidates))


def test_window_targets_point_into_the_window_or_at_bos():
    # <s> + 4 question sub-words + </s>: the context starts at position 6; 10 sub-words + </s>
    assert window_targets("7 20 23 25", question_size=5, window_size=11) == (
        [9, 11], [7, 6, 20, 10, 23, 25])
    assert window_targets("7 20 28 30 23 23", 5, 11)[0] == [0, 0]  # the first answer crosses out
    assert window_targets("7 20 10 12", 5, 11)[0] == [0, 0]  # before the window


def test_window_spans_map_positions_back_to_context_sub_words():
    span = torch.tensor([[3, 6, 20, 10, 23, 25, -1, -1], [3, 2, 0, 4, 1, 1, 5, 6]])
    start, end = torch.full((2, 16), -5.0), torch.full((2, 16), -5.0)
    start[0, 9], end[0, 10] = 4.0, 3.0  # context sub-words 23..24
    start[1, 3], end[1, 3] = 1.0, 1.0  # context sub-word 1
    start[1, 0], end[1, 0] = 9.0, 9.0  # <s> is never an answer
    rows = window_spans(start, end, span, max_answer=30)
    assert rows == [(3, 7.0, 23, 24, ((23, 25),)), (3, 2.0, 1, 1, ((1, 1), (5, 6)))]


def test_a_question_is_scored_once_by_its_best_window():
    meter = BestSpans()
    meter.update([(0, 1.0, 3, 5, ((3, 5),)), (1, 2.0, 10, 11, ((10, 13), (20, 21)))])
    meter.update([(0, 3.0, 4, 5, ((3, 5),)), (1, 0.5, 20, 21, ((10, 13), (20, 21)))])
    # question 0: best window predicts 4..5 against 3..5: P 1, R 2/3, F1 0.8, no match;
    # question 1: 10..11 against 10..13: F1 2 * 1 * 0.5 / 1.5 = 2/3 (the other answer: 0)
    assert meter.exact_match == 0.0
    assert meter.f1 == pytest.approx(100 * (0.8 + 2 / 3) / 2, abs=0.01)
    meter.update([(2, 0.0, 7, 7, ((7, 7),))])
    assert meter.exact_match == pytest.approx(100 / 3, abs=0.01)
    assert overlap_f1((0, 1), (2, 3)) == 0.0
