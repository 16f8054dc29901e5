"""The alternating schedule as a mixin: it drives --optimizer omoe inside a fairseq task other
than sentence prediction, composed exactly as the README shows for masked_lm."""

from dataclasses import dataclass

import pytest
import torch
from fairseq.logging import metrics
from fairseq.tasks.masked_lm import MaskedLMConfig, MaskedLMTask

from omoe_plugin.optim.fairseq_omoe import FairseqOMoE, OMoEConfig
from omoe_plugin.tasks.schedule import OMoESchedule, OMoEScheduleConfig, find_omoe
from tests.conftest import dictionaries, tiny_model


@dataclass
class OMoEMaskedLMConfig(OMoEScheduleConfig, MaskedLMConfig):
    pass


class OMoEMaskedLMTask(OMoESchedule, MaskedLMTask):  # not registered: a test's own task
    pass


def updates(task, model, optimizer, count: int) -> None:
    for update_num in range(count):
        optimizer.zero_grad()
        features, _ = model(torch.randint(4, 40, (2, 6)))
        features.square().mean().backward()
        task.optimizer_step(optimizer, model, update_num)


def test_the_schedule_runs_omoe_in_a_masked_lm_task(task):
    words, _ = dictionaries()
    mlm = OMoEMaskedLMTask(OMoEMaskedLMConfig(data="unused"), words)
    assert mlm.cfg.omoe_similarity_tokens == 512 and mlm.mask_idx == words.index("<mask>")
    model = tiny_model(task).train()
    config = OMoEConfig(lr=[0.01], omoe_accumulate_steps=1, omoe_orthogonal_steps=2)
    optimizer = FairseqOMoE(config, list(model.parameters()))
    with metrics.aggregate(new_root=True) as logged:
        updates(mlm, model, optimizer, 3)  # accumulate, orthogonal, orthogonal
    assert logged["omoe_phase"].avg == pytest.approx(2 / 3)
    assert find_omoe(optimizer).counters["projector_updates"] == 1


def test_without_the_schedule_omoe_says_what_is_missing(task):
    words, _ = dictionaries()
    mlm = MaskedLMTask(MaskedLMConfig(data="unused"), words)
    model = tiny_model(task).train()
    optimizer = FairseqOMoE(OMoEConfig(lr=[0.01]), list(model.parameters()))
    with pytest.raises(RuntimeError, match="stepped without a phase"):
        updates(mlm, model, optimizer, 1)
