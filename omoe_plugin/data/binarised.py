"""Reading sentences back from a binarised fairseq `sentence_prediction` directory."""

from pathlib import Path

import torch
from fairseq.data import data_utils


def leading_sentences(data: Path, split: str, dictionary, max_tokens: int) -> torch.Tensor:
    """The split's first sentences, <s>-prefixed as in training, up to max_tokens tokens,
    collated into a padded batch [sentences, length]."""
    dataset = data_utils.load_indexed_dataset(str(data / "input0" / split), dictionary)
    if dataset is None:
        raise FileNotFoundError(f"no binarised split {data / 'input0' / split}")
    rows, total = [], 0
    for i in range(len(dataset)):
        if total >= max_tokens:
            break
        rows.append(torch.cat([torch.tensor([dictionary.bos()]), dataset[i]]))
        total += len(rows[-1])
    return data_utils.collate_tokens(rows, dictionary.pad())
