"""What the tasks with a per-token head (token tagging, span QA) share: the token dictionary,
reading a binarised column, the length check, the shuffled example set, and the head they
add to the model."""

import logging
import os

import numpy as np
from fairseq.data import (
    Dictionary,
    IdDataset,
    NestedDictionaryDataset,
    NumelDataset,
    NumSamplesDataset,
    RightPadDataset,
    SortDataset,
    data_utils,
)
from fairseq.tasks import FairseqTask
from fairseq.tasks.sentence_prediction import SentencePredictionTask

logger = logging.getLogger(__name__)


class TokenHeadTask(FairseqTask):
    """A FairseqTask on `omoe-prepare-data` output whose model gets the per-token head
    `head_name` with `head_outputs()` outputs. Subclasses name themselves (`task_key`, their
    registry key) and what writes their data (`prepared_by`), for messages, and build a
    split's examples in `build_examples` (`load_column`, `set_examples`), which `load_dataset`
    calls (so that a mixin's `load_dataset`, before this class, sees every split loaded)."""

    task_key: str  # the --task name
    head_name: str
    prepared_by: str  # e.g. "omoe-prepare-data --format conll (or --corpus conll2003)"

    def __init__(self, cfg, dictionary: Dictionary) -> None:
        super().__init__(cfg)
        self.dictionary = dictionary

    @classmethod
    def token_dictionary(cls, data: str, *others: str) -> Dictionary:
        """data/input0/dict.txt (read as the encoder's import reads it: with <mask>), after
        checking that it and the data's other files or folders `others` exist."""
        path = os.path.join(data, "input0", "dict.txt")
        for needed in (path, *(os.path.join(data, other) for other in others)):
            if not os.path.exists(needed):
                raise FileNotFoundError(f"{needed} does not exist: --task {cls.task_key} "
                                        f"reads a directory written by {cls.prepared_by}")
        return SentencePredictionTask.load_dictionary(path)

    def load_dataset(self, split, combine=False, **kwargs):
        return self.build_examples(split, combine)  # the subclass's

    def load_column(self, column: str, split: str, dictionary: Dictionary, combine: bool):
        path = os.path.join(self.cfg.data, column, split)
        dataset = data_utils.load_indexed_dataset(path, dictionary, combine=combine)
        if dataset is None:
            raise FileNotFoundError(f"no {split} split in {os.path.dirname(path)}")
        return dataset

    def set_examples(self, split: str, tokens, target, **fields) -> NestedDictionaryDataset:
        """Store the split's examples: tokens (`<s> ... </s>`, no longer than the positions),
        their target and any other fields, shuffled unless --no-shuffle."""
        if tokens.sizes.max() > self.cfg.max_positions:
            raise ValueError(
                f"{self.cfg.data}: the {split} split has examples of {tokens.sizes.max()} "
                f"tokens, more than --max-positions {self.cfg.max_positions}: prepare it with "
                f"omoe-prepare-data --max-tokens {self.cfg.max_positions - 2}"
            )
        dataset = NestedDictionaryDataset(
            {
                "id": IdDataset(),
                "net_input": {
                    "src_tokens": RightPadDataset(tokens, pad_idx=self.dictionary.pad()),
                    "src_lengths": NumelDataset(tokens, reduce=False),
                },
                "target": target,
                **fields,
                "nsentences": NumSamplesDataset(),
                "ntokens": NumelDataset(tokens, reduce=True),
            },
            sizes=[tokens.sizes],
        )
        if not self.cfg.no_shuffle:
            with data_utils.numpy_seed(self.cfg.seed):
                dataset = SortDataset(dataset, sort_order=[np.random.permutation(len(dataset))])
        self.datasets[split] = dataset
        return dataset

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        if not hasattr(model, "register_token_head"):
            raise ValueError(f"--task {self.task_key} needs a model with a per-token head "
                             f"(--arch omoe_roberta_*), got {type(model).__name__}")
        model.register_token_head(self.head_name, self.head_outputs())
        return model

    def max_positions(self):
        return self.cfg.max_positions

    @property
    def source_dictionary(self):
        return self.dictionary
