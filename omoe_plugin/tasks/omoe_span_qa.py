"""`--task omoe_span_qa`: extractive question answering (SQuAD-style) on a directory written
by `omoe-prepare-data --format squad` (or `--corpus disflqa`), with OMoE's alternating schedule
(`schedule`). An example is one context window with its question, `<s> question </s> window
</s>`; the target is the answer's first and last position in it, or <s> (0, 0) for a window
that does not hold the answer (layout and windowing: `omoe_plugin.data.squad`)."""

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from fairseq.data import (
    ConcatSentencesDataset,
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

from ..models.omoe_roberta import SPAN_HEAD
from .schedule import OMoESchedule, OMoEScheduleConfig

logger = logging.getLogger(__name__)


@dataclass
class SpanQAConfig(FairseqDataclass):
    data: str = field(default="", metadata={"help": "omoe-prepare-data --format squad output"})
    max_positions: int = field(default=512, metadata={"help": "max input length"})
    max_answer_tokens: int = field(
        default=30, metadata={"help": "longest answer predicted, in sub-words"}
    )
    no_shuffle: bool = field(default=False, metadata={"help": "keep the training order"})
    seed: int = II("common.seed")


@dataclass
class OMoESpanQAConfig(OMoEScheduleConfig, SpanQAConfig):
    pass


def window_targets(line: str, question_size: int, window_size: int) -> tuple[list[int], list[int]]:
    """One window's label line (`omoe_plugin.data.squad`) and the sizes of its question and
    window (each with its </s>) -> the target [start, end] (positions in `<s> question </s>
    window </s>`; [0, 0] when the window does not hold the first answer whole) and the span
    record [question index, first context position, the window's first context sub-word,
    context sub-words in the window, gold start, gold end, ...] the metrics need."""
    index, offset, *golds = (int(v) for v in line.split())
    prefix, length = 1 + question_size, window_size - 1  # <s> question </s>; the window's </s>
    start, end = golds[0] - offset, golds[1] - offset
    inside = 0 <= start and end < length
    target = [prefix + start, prefix + end] if inside else [0, 0]
    return target, [index, prefix, offset, length, *golds]


@register_task("omoe_span_qa", dataclass=OMoESpanQAConfig)
class OMoESpanQATask(OMoESchedule, FairseqTask):
    """Question and context window in, start and end logits on every position out
    (`SPAN_HEAD`); validation reports `exact_match` and `f1` per question, over its windows
    (through the criterion `omoe_span_qa`), the metric to select checkpoints on."""

    def __init__(self, cfg, dictionary: Dictionary) -> None:
        super().__init__(cfg)
        self.dictionary = dictionary
        if cfg.max_answer_tokens < 1:
            raise ValueError(f"--max-answer-tokens must be >= 1, got {cfg.max_answer_tokens}")

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        path = os.path.join(cfg.data, "input0", "dict.txt")
        if not os.path.isfile(path) or not os.path.isdir(os.path.join(cfg.data, "input1")):
            raise FileNotFoundError(
                f"{path} does not exist: --task omoe_span_qa reads a directory written by "
                "omoe-prepare-data --format squad (or --corpus disflqa)"
            )
        dictionary = SentencePredictionTask.load_dictionary(path)  # as the encoder's import
        logger.info(f"[input] {len(dictionary)} types")
        return cls(cfg, dictionary)

    def load_dataset(self, split, combine=False, **kwargs):
        def load(column: str):
            path = os.path.join(self.cfg.data, column, split)
            dataset = data_utils.load_indexed_dataset(path, self.dictionary, combine=combine)
            if dataset is None:
                raise FileNotFoundError(f"no {split} split in {os.path.dirname(path)}")
            return dataset

        questions, contexts = load("input0"), load("input1")
        path = os.path.join(self.cfg.data, "label", f"{split}.label")
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        if len(lines) != len(questions):
            raise ValueError(f"{path} has {len(lines)} lines for {len(questions)} windows: "
                             "prepare the data again")
        targets, spans = zip(*(window_targets(line, int(q), int(c)) for line, q, c
                               in zip(lines, questions.sizes, contexts.sizes)))
        tokens = ConcatSentencesDataset(PrependTokenDataset(questions, self.dictionary.bos()),
                                        contexts)
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
                "target": RightPadDataset([torch.tensor(t) for t in targets], pad_idx=0),
                "span": RightPadDataset([torch.tensor(s) for s in spans], pad_idx=-1),
                "nsentences": NumSamplesDataset(),
                "ntokens": NumelDataset(tokens, reduce=True),
            },
            sizes=[tokens.sizes],
        )
        if not self.cfg.no_shuffle:
            with data_utils.numpy_seed(self.cfg.seed):
                dataset = SortDataset(dataset, sort_order=[np.random.permutation(len(dataset))])
        logger.info(f"loaded {split}: {len(dataset)} windows of "
                    f"{1 + max(s[0] for s in spans)} questions")
        self.datasets[split] = dataset
        return dataset

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        if not hasattr(model, "register_token_head"):
            raise ValueError(f"--task omoe_span_qa needs a model with a per-token head "
                             f"(--arch omoe_roberta_*), got {type(model).__name__}")
        model.register_token_head(SPAN_HEAD, 2)
        return model

    def max_positions(self):
        return self.cfg.max_positions

    @property
    def source_dictionary(self):
        return self.dictionary

    @property
    def target_dictionary(self):
        return self.dictionary
