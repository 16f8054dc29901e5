"""The alternating schedule, the routed-input capture per update and the optimizer lookup of the
omoe_sentence_prediction task, and its check of --num-classes against the data's record."""

from types import SimpleNamespace

import pytest
import torch
from fairseq.optim.adam import FairseqAdam, FairseqAdamConfig

from omoe_plugin.criterions.omoe_sentence_prediction import (
    OMoESentencePredictionCriterion,
    OMoESentencePredictionCriterionConfig,
)
from omoe_plugin.data.record import write_record
from omoe_plugin.moe import MoEArgs, MoELayer
from omoe_plugin.optim.fairseq_omoe import FairseqOMoE, OMoEConfig
from omoe_plugin.tasks.omoe_sentence_prediction import (
    OMoESentencePredictionConfig,
    OMoESentencePredictionTask,
    check_against_record,
)
from omoe_plugin.optim.settings import OMoESettings
from omoe_plugin.tasks.schedule import find_omoe
from tests.cli import USER_DIR, setup_error
from tests.conftest import dictionaries, tiny_model
from tests.criterions.test_omoe_sentence_prediction import sample


def test_phase_cycles_accumulate_then_orthogonal():
    settings = OMoESettings(accumulate_steps=2, orthogonal_steps=3)
    names = [settings.phase(u).name for u in range(11)]
    assert names == ["accumulate"] * 2 + ["orthogonal"] * 3 + ["accumulate"] * 2 + \
        ["orthogonal"] * 3 + ["accumulate"]
    assert [settings.phase(u).position for u in range(6)] == [0, 1, 2, 3, 4, 0]


def test_find_omoe_unwraps_the_fairseq_optimizer():
    layer = MoELayer(MoEArgs(embed_dim=4, ffn_dim=6, num_experts=2))
    wrapper = FairseqOMoE(OMoEConfig(lr=[0.1], omoe_betas="(0.9, 0.98)"), list(layer.parameters()))
    assert find_omoe(wrapper) is wrapper.optimizer
    assert wrapper.optimizer.defaults["betas"] == (0.9, 0.98)
    adam = FairseqAdam(FairseqAdamConfig(lr=[0.1], adam_betas="(0.9, 0.999)"), list(layer.parameters()))
    assert find_omoe(adam) is None


def omoe_task():
    """The alternating task on the conftest vocabulary, a tiny MoE model and its OMoE."""
    task = OMoESentencePredictionTask(OMoESentencePredictionConfig(num_classes=2), *dictionaries())
    model = tiny_model(task).train()
    optimizer = FairseqOMoE(OMoEConfig(lr=[0.01], omoe_stat="tokens", omoe_space="inputs"), list(model.parameters()))
    criterion = OMoESentencePredictionCriterion(OMoESentencePredictionCriterionConfig(), task)
    return task, model, optimizer, criterion


def test_a_skipped_update_leaves_nothing_in_the_next_updates_statistics():
    """fairseq does not advance update_num when a step is skipped (OOM, fp16 overflow): the
    inputs of the skipped step's micro-batches must not reach the statistics."""
    task, model, optimizer, criterion = omoe_task()
    optimizer.zero_grad()  # what Trainer.train_step does first, every step
    task.train_step(sample(task, seed=1), model, criterion, optimizer, update_num=0)
    optimizer.zero_grad()  # the step was skipped: the trainer clears it and moves on
    task.train_step(sample(task, seed=2), model, criterion, optimizer, update_num=0)
    task.optimizer_step(optimizer, model, update_num=0)

    clean_task, clean_model, clean_optimizer, clean_criterion = omoe_task()
    clean_optimizer.zero_grad()
    clean_task.train_step(sample(clean_task, seed=2), clean_model, clean_criterion,
                          clean_optimizer, update_num=0)
    clean_task.optimizer_step(clean_optimizer, clean_model, update_num=0)
    stats, clean = find_omoe(optimizer).stats, find_omoe(clean_optimizer).stats
    assert any(s.any() for s in clean.values())
    for key in clean:
        torch.testing.assert_close(stats[key], clean[key], atol=1e-6, rtol=0)


def test_micro_batches_of_one_update_share_one_capture():
    task, model, optimizer, criterion = omoe_task()
    optimizer.zero_grad()
    task.train_step(sample(task, seed=1), model, criterion, optimizer, update_num=0)
    first = task.capture
    task.train_step(sample(task, seed=2), model, criterion, optimizer, update_num=0)
    assert task.capture is first and first.counts  # --update-freq 2: both micro-batches


def test_validation_and_test_splits_score_every_example(movie_reviews):
    """fairseq drops a last batch whose size is not a multiple of
    --required-batch-size-multiple; only the training split may lose one."""
    cfg = OMoESentencePredictionConfig(data=str(movie_reviews[0]), num_classes=2, init_token=0,
                                       max_positions=128, seed=1, regression_target=False)
    task = OMoESentencePredictionTask.setup_task(cfg)
    for split in ("train", "valid", "test"):
        task.load_dataset(split)
        batches = task.get_batch_iterator(dataset=task.dataset(split), max_sentences=32,
                                          required_batch_size_multiple=8).frozen_batches
        seen = sum(len(b) for b in batches)
        size = movie_reviews[1][split]
        assert seen == (size - size % 8 if split == "train" else size), split


def test_num_classes_and_regression_target_are_checked_against_the_data(movie_reviews, tmp_path):
    """The directory's record (omoe-prepare-data's omoe-data.json) stops a mismatch at set-up,
    in one line, instead of fairseq's `IndexError: Target 4 is out of bounds` in training."""
    data = movie_reviews[0]
    args = ["--user-dir", USER_DIR, "--task", "omoe_sentence_prediction", "--init-token", "0",
            "--max-positions", "128", "--arch", "omoe_roberta_tiny", "--cpu",
            "--criterion", "sentence_prediction"]
    where = f"{data} (recorded in its omoe-data.json by omoe-prepare-data)"
    assert setup_error(data, [*args, "--num-classes", "5"]) == (
        f"--num-classes 5 does not match the data: {where} holds 2 classes (neg, pos): pass "
        "--num-classes 2")
    assert setup_error(data, [*args, "--num-classes", "2", "--regression-target"]) == (
        f"--num-classes 2 does not match the data: {where} holds one regression target per "
        "example: pass --num-classes 1")
    cfg = lambda **fields: SimpleNamespace(data=str(tmp_path), **fields)  # noqa: E731
    check_against_record(cfg(num_classes=3, regression_target=False))  # no record
    write_record(tmp_path, task="sentence_prediction", regression=True, targets=True,
                 num_classes=1, labels=None)
    with pytest.raises(ValueError, match="holds regression targets .*: pass --regression-target"):
        check_against_record(cfg(num_classes=2, regression_target=False))
    check_against_record(cfg(num_classes=1, regression_target=True))
