"""`--task omoe_token_classification`: per-token tagging (NER) on a directory written by
`omoe-prepare-data --format conll` (or `--corpus conll2003`), with OMoE's alternating schedule
(`schedule`). Targets are one tag index per sub-word position; positions without a tag (<s>,
</s>, a word's later sub-words, padding) are IGNORE."""

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from fairseq.data import (
    BaseWrapperDataset,
    Dictionary,
    IdDataset,
    NestedDictionaryDataset,
    NumelDataset,
    NumSamplesDataset,
    PrependTokenDataset,
    RightPadDataset,
    SortDataset,
    data_utils,
)
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from fairseq.tasks.sentence_prediction import SentencePredictionTask
from omegaconf import II

from ..models.omoe_roberta import TOKEN_HEAD
from .schedule import OMoESchedule, OMoEScheduleConfig

logger = logging.getLogger(__name__)
IGNORE = -100  # target of a position without a tag (torch's cross-entropy default)


@dataclass
class TokenClassificationConfig(FairseqDataclass):
    data: str = field(default="", metadata={"help": "omoe-prepare-data --format conll output"})
    max_positions: int = field(default=512, metadata={"help": "max input length"})
    no_shuffle: bool = field(default=False, metadata={"help": "keep the training order"})
    seed: int = II("common.seed")


@dataclass
class OMoETokenClassificationConfig(OMoEScheduleConfig, TokenClassificationConfig):
    pass


class TagTargets(BaseWrapperDataset):
    """Label-dictionary ids -> tag indices (dictionary order less fairseq's specials), with
    the specials (<pad> for later sub-words, and <s>, </s>) as IGNORE."""

    def __init__(self, dataset, nspecial: int) -> None:
        super().__init__(dataset)
        self.nspecial = nspecial

    def __getitem__(self, index):
        ids = self.dataset[index]
        return torch.where(ids < self.nspecial, IGNORE, ids - self.nspecial)


@register_task("omoe_token_classification", dataclass=OMoETokenClassificationConfig)
class OMoETokenClassificationTask(OMoESchedule, FairseqTask):
    """Sub-word tokens in, one tag per word (on its first sub-word) out. The tag set is the
    data's label/dict.txt, in its order; `entity_f1` (seqeval's entity-level F1, via the
    criterion) is the validation metric to select checkpoints on."""

    def __init__(self, cfg, dictionary: Dictionary, tags: Dictionary) -> None:
        super().__init__(cfg)
        self.dictionary, self.tags = dictionary, tags

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        paths = [os.path.join(cfg.data, d, "dict.txt") for d in ("input0", "label")]
        for path in paths:
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"{path} does not exist: --task omoe_token_classification reads a directory "
                    "written by omoe-prepare-data --format conll (or --corpus conll2003)"
                )
        dictionary = SentencePredictionTask.load_dictionary(paths[0])  # as the encoder's import
        tags = Dictionary.load(paths[1])
        logger.info(f"[input] {len(dictionary)} types; [tags] {cls.tag_names(tags)}")
        return cls(cfg, dictionary, tags)

    @staticmethod
    def tag_names(tags: Dictionary) -> list[str]:
        return tags.symbols[tags.nspecial:]

    @property
    def tag_list(self) -> list[str]:
        """The tags, by tag index."""
        return self.tag_names(self.tags)

    def load_dataset(self, split, combine=False, **kwargs):
        def load(column: str, dictionary: Dictionary):
            path = os.path.join(self.cfg.data, column, split)
            dataset = data_utils.load_indexed_dataset(path, dictionary, combine=combine)
            if dataset is None:
                raise FileNotFoundError(f"no {split} split in {os.path.dirname(path)}")
            return dataset

        tokens = PrependTokenDataset(load("input0", self.dictionary), self.dictionary.bos())
        labels = PrependTokenDataset(load("label", self.tags), self.tags.pad())
        if not np.array_equal(tokens.sizes, labels.sizes):
            bad = int(np.flatnonzero(tokens.sizes != labels.sizes)[0])
            raise ValueError(f"{self.cfg.data}: {split} example {bad} has {tokens.sizes[bad]} "
                             f"tokens but {labels.sizes[bad]} labels: prepare the data again")
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
                "target": RightPadDataset(TagTargets(labels, self.tags.nspecial), IGNORE),
                "nsentences": NumSamplesDataset(),
                "ntokens": NumelDataset(tokens, reduce=True),
            },
            sizes=[tokens.sizes],
        )
        if not self.cfg.no_shuffle:
            with data_utils.numpy_seed(self.cfg.seed):
                dataset = SortDataset(dataset, sort_order=[np.random.permutation(len(dataset))])
        logger.info(f"loaded {split}: {len(dataset)} examples")
        self.datasets[split] = dataset
        return dataset

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        if not hasattr(model, "register_token_head"):
            raise ValueError(f"--task omoe_token_classification needs a model with a per-token "
                             f"head (--arch omoe_roberta_*), got {type(model).__name__}")
        model.register_token_head(TOKEN_HEAD, len(self.tag_list))
        return model

    def max_positions(self):
        return self.cfg.max_positions

    @property
    def source_dictionary(self):
        return self.dictionary

    @property
    def target_dictionary(self):
        return self.tags
