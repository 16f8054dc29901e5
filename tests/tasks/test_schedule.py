"""The OMoE mixin in a fairseq task other than sentence prediction, composed exactly as the
docs show for masked_lm; --optimizer omoe in a task without it; and the mixin's
--omoe-group-by-length in every omoe_* task, on real data."""

from dataclasses import dataclass

import pytest
import torch
from fairseq.logging import metrics
from fairseq.tasks.masked_lm import MaskedLMConfig, MaskedLMTask

from omoe_plugin.optim.fairseq_omoe import FairseqOMoE, OMoEConfig
from omoe_plugin.tasks.omoe_sentence_prediction import (
    OMoESentencePredictionConfig,
    OMoESentencePredictionTask,
)
from omoe_plugin.tasks.omoe_span_qa import OMoESpanQAConfig, OMoESpanQATask
from omoe_plugin.tasks.omoe_token_classification import (
    OMoETokenClassificationConfig,
    OMoETokenClassificationTask,
)
from omoe_plugin.tasks.schedule import (
    ByLength,
    OMoESchedule,
    OMoEScheduleConfig,
    find_omoe,
)
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


def test_without_the_mixin_the_default_reading_runs_on_its_own_schedule(task):
    words, _ = dictionaries()
    mlm = MaskedLMTask(MaskedLMConfig(data="unused"), words)
    model = tiny_model(task).train()
    config = OMoEConfig(lr=[0.01], omoe_accumulate_steps=1, omoe_orthogonal_steps=2)
    optimizer = FairseqOMoE(config, list(model.parameters()))
    updates(mlm, model, optimizer, 3)  # accumulate, orthogonal, orthogonal
    omoe = find_omoe(optimizer)
    assert omoe.counters["steps"] == 3 and omoe.counters["projector_updates"] == 1
    assert omoe.report["phase"] == 1.0 and 0 < omoe.last_measured["removed"] < 1


def test_without_the_mixin_a_statistics_reading_says_what_is_missing(task):
    words, _ = dictionaries()
    mlm = MaskedLMTask(MaskedLMConfig(data="unused"), words)
    model = tiny_model(task).train()
    optimizer = FairseqOMoE(OMoEConfig(lr=[0.01], omoe_space="inputs"), list(model.parameters()))
    with pytest.raises(RuntimeError, match="--omoe-space inputs needs the routed inputs"):
        updates(mlm, model, optimizer, 1)


@pytest.fixture
def prepared(movie_reviews, conll, disflqa):
    """Each omoe_* task on real data: (task class, its config's class, data directory)."""
    return {"sentences": (OMoESentencePredictionTask, OMoESentencePredictionConfig,
                          movie_reviews[0]),
            "tags": (OMoETokenClassificationTask, OMoETokenClassificationConfig, conll / "data"),
            "spans": (OMoESpanQATask, OMoESpanQAConfig, disflqa)}


@pytest.mark.parametrize("kind", ["sentences", "tags", "spans"])
def test_group_by_length_batches_similar_lengths_anew_each_epoch(prepared, kind):
    """--omoe-group-by-length: every example once an epoch, in batches of about one length
    (far less padding than fairseq's random batches), different batches the next epoch, and
    the same batches again for the same epoch (a resumed run continues as it would have)."""
    task_class, config_class, data = prepared[kind]
    extra = {"num_classes": 2, "init_token": 0, "regression_target": False} \
        if kind == "sentences" else {}

    def task(group: bool):
        task = task_class.setup_task(config_class(data=str(data), max_positions=128, seed=1,
                                                  omoe_group_by_length=group, **extra))
        for split in ("train", "valid"):
            task.load_dataset(split)
            assert isinstance(task.dataset(split), ByLength) == group
        return task

    def batches(task, epoch: int, split: str = "train") -> list[list[int]]:
        frozen = task.get_batch_iterator(dataset=task.dataset(split), max_sentences=16, seed=1,
                                         epoch=epoch).frozen_batches
        return [sorted(b) for b in frozen]

    def padded_share(batches, dataset) -> float:
        sizes = [[dataset.num_tokens(i) for i in b] for b in batches]
        return sum(len(s) * max(s) - sum(s) for s in sizes) / sum(len(s) * max(s) for s in sizes)

    random, grouped = task(False), task(True)
    for split in ("train", "valid"):
        dataset = grouped.dataset(split)
        assert sorted(i for b in batches(grouped, 1, split) for i in b) == \
            list(range(len(dataset)))
        assert padded_share(batches(grouped, 1, split), dataset) < \
            padded_share(batches(random, 1, split), random.dataset(split)) / 2
    first = batches(grouped, 1)
    assert batches(task(True), 1) == first  # a new process: the same batches
    assert sorted(batches(grouped, 2)) != sorted(first)
