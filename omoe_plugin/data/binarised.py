"""Reading examples back from a binarised fairseq `sentence_prediction`-style directory."""

from pathlib import Path

import torch
from fairseq.data import data_utils


def leading_sentences(data: Path, split: str, dictionary, max_tokens: int,
                      max_positions: int) -> torch.Tensor:
    """The split's first examples as the model reads them (`<s> text </s>`, a pair's second
    text or a QA context window appended), cut to max_positions as training's
    `--shorten-method truncate` cuts them, up to max_tokens tokens in all, collated into a
    padded batch [examples, length]."""
    columns = [data_utils.load_indexed_dataset(str(data / c / split), dictionary)
               for c in ("input0", "input1") if (data / c).is_dir()]
    if columns[0] is None:
        raise FileNotFoundError(f"no binarised split {data / 'input0' / split}")
    rows, total = [], 0
    for i in range(len(columns[0])):
        if total >= max_tokens:
            break
        row = torch.cat([torch.tensor([dictionary.bos()]), *(c[i] for c in columns)])
        rows.append(row[:max_positions])
        total += len(rows[-1])
    return data_utils.collate_tokens(rows, dictionary.pad())
