"""`--task omoe_sentence_prediction`: fairseq's sentence_prediction with OMoE's alternating
schedule, routed-input capture, and projector / expert-similarity logging (`schedule`)."""

from dataclasses import dataclass

from fairseq.tasks import register_task
from fairseq.tasks.sentence_prediction import SentencePredictionConfig, SentencePredictionTask

from .schedule import OMoESchedule, OMoEScheduleConfig


@dataclass
class OMoESentencePredictionConfig(OMoEScheduleConfig, SentencePredictionConfig):
    pass


@register_task("omoe_sentence_prediction", dataclass=OMoESentencePredictionConfig)
class OMoESentencePredictionTask(OMoESchedule, SentencePredictionTask):
    """sentence_prediction whose updates alternate as `--optimizer omoe` asks (see
    `schedule.OMoESchedule`)."""
