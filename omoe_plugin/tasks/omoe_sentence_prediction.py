"""`--task omoe_sentence_prediction`: fairseq's sentence_prediction with OMoE's alternating
schedule, routed-input capture, and projector / expert-similarity logging (`schedule`), which
checks `--num-classes` and `--regression-target` against the data's record (`data.record`)."""

from dataclasses import dataclass

from fairseq.tasks import register_task
from fairseq.tasks.sentence_prediction import SentencePredictionConfig, SentencePredictionTask

from ..data.record import RECORD, read_record
from .schedule import OMoESchedule, OMoEScheduleConfig


@dataclass
class OMoESentencePredictionConfig(OMoEScheduleConfig, SentencePredictionConfig):
    pass


def check_against_record(cfg) -> None:
    """Stop with one line naming the option, the data directory and what it holds where
    --num-classes or --regression-target disagree with what omoe-prepare-data recorded (fairseq
    would fail later: `IndexError: Target 4 is out of bounds`, or a missing label file). A
    directory without a record (prepared before it existed) is not checked."""
    record = read_record(cfg.data)
    if record is None or record.get("task") != "sentence_prediction":
        return
    where = f"{cfg.data} (recorded in its {RECORD} by omoe-prepare-data)"
    if cfg.regression_target and not record.get("targets"):
        raise ValueError(f"--regression-target: {where} holds class labels, not regression "
                         f"targets: drop it and pass --num-classes {record['num_classes']}")
    if not cfg.regression_target and record.get("regression"):
        raise ValueError(f"{where} holds regression targets (omoe-prepare-data --regression): "
                         "pass --regression-target --num-classes 1")
    expected = 1 if cfg.regression_target else record["num_classes"]
    if cfg.num_classes != expected:
        held = ("one regression target per example" if cfg.regression_target else
                f"{expected} classes ({', '.join(record.get('labels') or [])})")
        raise ValueError(f"--num-classes {cfg.num_classes} does not match the data: {where} "
                         f"holds {held}: pass --num-classes {expected}")


@register_task("omoe_sentence_prediction", dataclass=OMoESentencePredictionConfig)
class OMoESentencePredictionTask(OMoESchedule, SentencePredictionTask):
    """sentence_prediction whose updates alternate as `--optimizer omoe` asks (see
    `schedule.OMoESchedule`)."""

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        check_against_record(cfg)
        return super().setup_task(cfg, **kwargs)
