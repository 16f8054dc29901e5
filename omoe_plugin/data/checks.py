"""Checks of prepared examples that stop `omoe-prepare-data` at what a later step (fairseq's
binariser, fairseq-train) would otherwise trip over minutes later, each naming the file and line.

- a class label must be one token and none of fairseq's special symbols (`check_label`):
  fairseq-preprocess splits a label line at whitespace, so "sport news" became two labels and
  training stopped with `stack expects each tensor to be equal size`;
- a label (a tag) of the valid or test split must occur in training (`unseen_message`,
  `map_unseen_labels`): a model cannot learn it, and fairseq maps it to <unk>;
- an example longer than `--max-tokens` sub-words (`LongTexts`) is cut, counted and reported
  once (`--long-texts truncate`, the default), or stops the run (`--long-texts refuse`);
  unchecked, fairseq-train stops at it: `Size of sample #183 is invalid (=145) since
  max_positions=128`.
"""

import logging
from typing import Optional, Sequence, TypeVar

logger = logging.getLogger(__name__)
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # fairseq's own symbols in every dictionary
Example = TypeVar("Example")  # tables.Example (which reads its rows with check_label)
LONG_TEXTS = ("truncate", "refuse")  # --long-texts


def check_label(label: str, where: str, column: str) -> None:
    """Stop at a class label fairseq cannot read back as one class (see the module doc)."""
    if len(label.split()) > 1:
        raise ValueError(
            f"{where}: the label {label!r} (column {column!r}, --label-column) holds a space: "
            f"fairseq reads a label as one word, so it would become {len(label.split())} labels; "
            f"write it as one word, e.g. {'_'.join(label.split())!r}")
    if label in SPECIALS:
        raise ValueError(f"{where}: the label {label!r} (column {column!r}, --label-column) is "
                         f"one of fairseq's special symbols ({', '.join(SPECIALS)}): rename it")


def known_list(known: Sequence[str], limit: int = 12) -> str:
    """The training split's labels for a message: sorted, at most `limit` of them."""
    names = sorted(known)
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def unseen_message(where: str, kind: str, value: str, split: str, known: Sequence[str]) -> str:
    """The error for a label (kind "label") or tag (kind "tag") of `split` that the training
    split does not have, at `where` (its file:line)."""
    return (f"{where}: {kind} {value!r} of the {split} split is not in the training split's "
            f"{kind} set ({known_list(known)}): a model cannot learn it")


def map_unseen_labels(splits: dict[str, list[Example]],
                      unseen_label: Optional[str] = None) -> dict[str, list[Example]]:
    """The splits, each valid or test label that training never shows either refused (an
    error naming the first such example) or, with unseen_label (--unseen-label, a training
    label), replaced by unseen_label, with one warning counting them."""
    known = {e.label for e in splits["train"]}
    if unseen_label is not None and unseen_label not in known:
        raise ValueError(f"--unseen-label {unseen_label!r} is not a label of the training split "
                         f"({known_list(known)})")
    mapped, first = 0, None
    result = {"train": splits["train"]}
    for split, examples in splits.items():
        if split == "train":
            continue
        result[split] = []
        for index, example in enumerate(examples):
            if example.label not in known:
                where = example.where or f"the {split} split's example {index + 1}"
                if unseen_label is None:
                    raise ValueError(unseen_message(where, "label", example.label, split, known)
                                     + "; fix the label, or pass --unseen-label LABEL to map "
                                     "every such label to a training label")
                mapped, first = mapped + 1, first or f"{where}, {example.label!r}"
                example = example._replace(label=unseen_label)
            result[split].append(example)
    if mapped:
        noun = "example has" if mapped == 1 else "examples have"
        logger.warning(f"{mapped} valid/test {noun} a label training never shows, now "
                       f"{unseen_label!r} (--unseen-label; the first: {first})")
    return result


class LongTexts:
    """Examples over max_tokens sub-words under the `--long-texts` policy: `refuse` stops at
    the first (an error naming it, `where`), `truncate` lets the caller cut it and `report`
    warns once with their number and the first one.

    noun: what an example is ("text", "pair", "sentence", "context"); cut: what truncating
    does to it, for the warning ("truncated", "cut into pieces at word boundaries"); limit:
    where max_tokens comes from, for the error (default: `--max-tokens N`)."""

    def __init__(self, policy: str, max_tokens: int, noun: str, cut: str,
                 limit: Optional[str] = None) -> None:
        if policy not in LONG_TEXTS:
            raise ValueError(f"--long-texts {policy!r}: choose one of {', '.join(LONG_TEXTS)}")
        if max_tokens < 1:
            raise ValueError(f"--max-tokens leaves {max_tokens} sub-words for a {noun}: raise it")
        self.policy, self.max_tokens, self.noun, self.cut = policy, max_tokens, noun, cut
        self.limit = limit or f"--max-tokens {max_tokens}: the model's positions less <s> and </s>"
        self.count, self.first = 0, ""

    def over(self, where: str, length: int) -> None:
        """One example of `length` sub-words is over the limit: refuse it, or count it."""
        if self.policy == "refuse":
            raise ValueError(
                f"{where}: the {self.noun} is {length} sub-words, more than the {self.max_tokens} "
                f"that fit ({self.limit}): shorten it, raise --max-tokens if the model has more "
                "positions, or pass --long-texts truncate")
        self.count += 1
        self.first = self.first or where

    def report(self, detail: str = "") -> None:
        """Warn once about the examples cut (detail: added to the message, e.g. the pieces)."""
        if self.count:
            were = "was" if self.count == 1 else "were"
            noun = self.noun if self.count == 1 else self.noun + "s"
            logger.warning(f"{self.count} {noun} longer than {self.max_tokens} sub-words {were} "
                           f"{self.cut}{detail} (the first: {self.first}); pass --long-texts "
                           "refuse to stop at such an example instead")


def fit_pair(first: list[str], second: Optional[list[str]], limit: LongTexts,
             where: str) -> tuple[list[str], Optional[list[str]]]:
    """An example's sub-words (a pair's second text: second, else None) within
    limit.max_tokens sub-words together, cut from the end as serving cuts an over-long input
    (omoe-infer): the second text first. limit is told of each example over it (where: its
    file:line), and refuses it under --long-texts refuse."""
    total, budget = len(first) + len(second or []), limit.max_tokens
    if total <= budget:
        return first, second
    limit.over(where, total)
    kept = first[:budget]
    return kept, None if second is None else second[:budget - len(kept)]
