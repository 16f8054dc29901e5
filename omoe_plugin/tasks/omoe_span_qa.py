"""`--task omoe_span_qa`: extractive question answering (SQuAD-style) on a directory written
by `omoe-prepare-data --format squad` (or `--corpus disflqa`), with OMoE's alternating schedule
(`schedule`). An example is one context window with its question, `<s> question </s> window
</s>`; the target is the answer's first and last position in it, or <s> (0, 0) for a window
that does not hold the answer (layout and windowing: `omoe_plugin.data.squad`)."""

import logging
from dataclasses import dataclass, field

import torch
from fairseq.data import ConcatSentencesDataset, PrependTokenDataset, RightPadDataset
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import register_task
from omegaconf import II

from ..models.omoe_roberta import SPAN_HEAD
from .schedule import OMoESchedule, OMoEScheduleConfig
from .token_head import TokenHeadTask

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
class OMoESpanQATask(OMoESchedule, TokenHeadTask):
    """Question and context window in, start and end logits on every position out
    (`SPAN_HEAD`); validation reports `exact_match` and `f1` per question, over its windows
    (through the criterion `omoe_span_qa`), the metric to select checkpoints on."""

    task_key, head_name = "omoe_span_qa", SPAN_HEAD
    prepared_by = "omoe-prepare-data --format squad (or --corpus disflqa)"

    def __init__(self, cfg, dictionary) -> None:
        super().__init__(cfg, dictionary)
        if cfg.max_answer_tokens < 1:
            raise ValueError(f"--max-answer-tokens must be >= 1, got {cfg.max_answer_tokens}")

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        dictionary = cls.token_dictionary(cfg.data, "input1")
        logger.info(f"[input] {len(dictionary)} types")
        return cls(cfg, dictionary)

    def head_outputs(self) -> int:
        return 2  # start, end

    def build_examples(self, split, combine):
        questions, contexts = (self.load_column(c, split, self.dictionary, combine)
                               for c in ("input0", "input1"))
        path = f"{self.cfg.data}/label/{split}.label"
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        if len(lines) != len(questions):
            raise ValueError(f"{path} has {len(lines)} lines for {len(questions)} windows: "
                             "prepare the data again")
        targets, spans = zip(*(window_targets(line, int(q), int(c)) for line, q, c
                               in zip(lines, questions.sizes, contexts.sizes)))
        tokens = ConcatSentencesDataset(PrependTokenDataset(questions, self.dictionary.bos()),
                                        contexts)
        dataset = self.set_examples(
            split, tokens, RightPadDataset([torch.tensor(t) for t in targets], pad_idx=0),
            span=RightPadDataset([torch.tensor(s) for s in spans], pad_idx=-1))
        logger.info(f"loaded {split}: {len(dataset)} windows of "
                    f"{1 + max(s[0] for s in spans)} questions")
        return dataset

    @property
    def target_dictionary(self):
        return self.dictionary
