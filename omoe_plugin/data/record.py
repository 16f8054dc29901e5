"""`omoe-data.json`: what `omoe-prepare-data` wrote into a data directory (the task it is for,
its classes or tags, the positions its examples fit), so that training can check its options
against the data before it trips over them (`--num-classes 2` on 5 classes stopped fairseq-train
with `IndexError: Target 4 is out of bounds`). Directories prepared before the record existed
have none: readers then check nothing.
"""

import json
from pathlib import Path
from typing import Any, Optional

RECORD = "omoe-data.json"


def write_record(directory: Path, **fields: Any) -> Path:
    """Write fields (JSON values) as directory's record; returns its path."""
    path = directory / RECORD
    path.write_text(json.dumps({"written_by": "omoe-prepare-data", **fields}, indent=1) + "\n",
                    encoding="utf-8")
    return path


def read_record(directory: Path) -> Optional[dict]:
    """The record of a data directory, or None if it has none (an older directory)."""
    path = Path(directory) / RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg}): prepare the "
                         "data again with omoe-prepare-data") from None


def dictionary_labels(dict_txt: Path) -> list[str]:
    """The labels of a binarised label dictionary, in class-index order: its entries counted
    in training (fairseq-preprocess pads it with never-seen `madeupwordNNNN` entries)."""
    labels = []
    for line in dict_txt.read_text(encoding="utf-8").splitlines():
        symbol, count = line.rsplit(" ", 1)
        if int(count) > 0:
            labels.append(symbol)
    return labels
