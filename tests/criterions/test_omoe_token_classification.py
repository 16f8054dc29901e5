"""Entity counts summed over batches give seqeval's corpus-level scores; ignored positions
are neither scored nor trained on."""

import pytest
import torch
from seqeval.metrics import f1_score, precision_score, recall_score

from omoe_plugin.criterions.omoe_token_classification import entity_counts
from omoe_plugin.tasks.omoe_token_classification import IGNORE

TAGS = ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]


def rows(sequences: list[list[str]], length: int) -> torch.Tensor:
    """Tag names -> indices [B, length], each word followed by an ignored sub-word."""
    out = torch.full((len(sequences), length), IGNORE)
    for i, seq in enumerate(sequences):
        out[i, 1:1 + 2 * len(seq):2] = torch.tensor([TAGS.index(t) for t in seq])
    return out


def test_summed_counts_are_seqevals_micro_scores():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-LOC", "I-LOC"], ["I-PER", "O"],
            ["B-LOC", "B-LOC", "O", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["O", "B-LOC", "O"], ["I-PER", "O"],
            ["B-LOC", "I-LOC", "B-PER", "O"]]
    total = {}
    for batch in ((0, 2), (2, 4)):  # two batches, as validation sees them
        g, p = gold[slice(*batch)], pred[slice(*batch)]
        # predictions at ignored positions must not count: put an entity there
        predicted = rows(p, 10).masked_fill(rows(g, 10) == IGNORE, TAGS.index("B-PER"))
        for key, value in entity_counts(predicted, rows(g, 10), TAGS).items():
            total[key] = total.get(key, 0) + value
    correct, predicted, in_gold = total.values()
    assert correct / predicted == pytest.approx(precision_score(gold, pred))
    assert correct / in_gold == pytest.approx(recall_score(gold, pred))
    assert 2 * correct / (predicted + in_gold) == pytest.approx(f1_score(gold, pred))
    assert (correct, predicted, in_gold) == (2, 5, 6)
