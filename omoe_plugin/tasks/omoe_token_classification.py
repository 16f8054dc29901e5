"""`--task omoe_token_classification`: per-token tagging (NER) on a directory written by
`omoe-prepare-data --format conll` (or `--corpus conll2003`), with OMoE's alternating schedule
(`schedule`). Targets are one tag index per sub-word position; positions without a tag (<s>,
</s>, a word's later sub-words, padding) are IGNORE."""

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from fairseq.data import BaseWrapperDataset, Dictionary, PrependTokenDataset, RightPadDataset
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import register_task
from omegaconf import II

from ..models.omoe_roberta import TOKEN_HEAD
from .schedule import OMoESchedule, OMoEScheduleConfig
from .token_head import TokenHeadTask

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
class OMoETokenClassificationTask(OMoESchedule, TokenHeadTask):
    """Sub-word tokens in, one tag per word (on its first sub-word) out. The tag set is the
    data's label/dict.txt, in its order; `entity_f1` (seqeval's entity-level F1, via the
    criterion) is the validation metric to select checkpoints on."""

    task_key, head_name = "omoe_token_classification", TOKEN_HEAD
    prepared_by = "omoe-prepare-data --format conll (or --corpus conll2003)"

    def __init__(self, cfg, dictionary: Dictionary, tags: Dictionary) -> None:
        super().__init__(cfg, dictionary)
        self.tags = tags

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        dictionary = cls.token_dictionary(cfg.data, "label/dict.txt")
        tags = Dictionary.load(f"{cfg.data}/label/dict.txt")
        logger.info(f"[input] {len(dictionary)} types; [tags] {cls.tag_names(tags)}")
        return cls(cfg, dictionary, tags)

    @staticmethod
    def tag_names(tags: Dictionary) -> list[str]:
        return tags.symbols[tags.nspecial:]

    @property
    def tag_list(self) -> list[str]:
        """The tags, by tag index."""
        return self.tag_names(self.tags)

    def head_outputs(self) -> int:
        return len(self.tag_list)

    def build_examples(self, split, combine):
        tokens = PrependTokenDataset(self.load_column("input0", split, self.dictionary, combine),
                                     self.dictionary.bos())
        labels = PrependTokenDataset(self.load_column("label", split, self.tags, combine),
                                     self.tags.pad())
        if not np.array_equal(tokens.sizes, labels.sizes):
            bad = int(np.flatnonzero(tokens.sizes != labels.sizes)[0])
            raise ValueError(f"{self.cfg.data}: {split} example {bad} has {tokens.sizes[bad]} "
                             f"tokens but {labels.sizes[bad]} labels: prepare the data again")
        dataset = self.set_examples(
            split, tokens, RightPadDataset(TagTargets(labels, self.tags.nspecial), IGNORE))
        logger.info(f"loaded {split}: {len(dataset)} examples")
        return dataset

    @property
    def target_dictionary(self):
        return self.tags
