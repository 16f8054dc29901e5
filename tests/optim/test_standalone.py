"""OMoE outside fairseq: a plain PyTorch loop equals the fairseq task's updates on the same model
and data, and Hugging Face's Trainer steps it on a transformers Mixtral whose experts the
adapter finds, exactly as a plain loop does."""

import pytest
import torch

from omoe_plugin.optim import OMoE
from omoe_plugin.optim.adapters import stacked_experts
from omoe_plugin.optim.fairseq_omoe import FairseqOMoE, OMoEConfig
from omoe_plugin.tasks.omoe_sentence_prediction import (
    OMoESentencePredictionConfig,
    OMoESentencePredictionTask,
)
from tests.conftest import dictionaries, tiny_model
from tests.criterions.test_omoe_sentence_prediction import criterion, sample

CYCLE = dict(accumulate_steps=2, orthogonal_steps=2)


def test_a_plain_pytorch_loop_equals_the_fairseq_task_update_for_update():
    task = OMoESentencePredictionTask(OMoESentencePredictionConfig(num_classes=2), *dictionaries())
    loss_of = criterion(task)
    fairseq_model, plain_model = tiny_model(task).train(), tiny_model(task).train()
    config = OMoEConfig(lr=[0.01], omoe_accumulate_steps=2, omoe_orthogonal_steps=2)
    fairseq_optimizer = FairseqOMoE(config, list(fairseq_model.parameters()))
    # the plain loop: the experts found by the adapter, everything else a plain parameter
    optimizer = OMoE(plain_model.parameters(), lr=0.01, experts=stacked_experts(plain_model),
                     **CYCLE)
    assert optimizer.experts.keys() == {"0.0", "0.1", "1.0", "1.1"}
    for update in range(9):  # two cycles and one more accumulating update
        batch = sample(task, seed=update)
        fairseq_optimizer.zero_grad()
        torch.manual_seed(update)  # the same dropout masks on both paths
        task.train_step(batch, fairseq_model, loss_of, fairseq_optimizer, update_num=update)
        task.optimizer_step(fairseq_optimizer, fairseq_model, update_num=update)

        optimizer.zero_grad()
        torch.manual_seed(update)
        loss, _, _ = loss_of(plain_model, batch)
        loss.backward()
        optimizer.step()
        for p, q in zip(fairseq_model.parameters(), plain_model.parameters()):
            assert torch.equal(p, q), update
    assert optimizer.counters["projector_updates"] == 2 and optimizer.last_measured["removed"] > 0


def test_experts_given_as_a_marked_param_group():
    task = OMoESentencePredictionTask(OMoESentencePredictionConfig(num_classes=2), *dictionaries())
    model = tiny_model(task)
    experts = [w for layer in stacked_experts(model) for w in layer]
    rest = [p for p in model.parameters() if all(p is not w for w in experts)]
    optimizer = OMoE([{"params": rest}, {"params": experts, "omoe_experts": True, "lr": 0.1}])
    assert len(optimizer.experts) == 4 and all(p is w for p, w in
                                               zip(optimizer.experts.values(), experts))
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 0.1]


def test_experts_that_are_not_stacked_or_not_trained_are_refused():
    linear = torch.nn.Linear(4, 4)
    with pytest.raises(ValueError, match=r"stacked as \[E, out, in\]"):
        OMoE(linear.parameters(), experts=[[linear.weight]])
    with pytest.raises(ValueError, match="among the parameters"):
        OMoE(linear.parameters(), experts=[[torch.nn.Parameter(torch.zeros(2, 3, 4))]])


def tiny_mixtral():
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    config = MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=32)
    return MixtralForCausalLM(config)


def test_hugging_face_trainer_steps_omoe_on_a_mixtral_as_a_plain_loop_does(tmp_path):
    from torch.utils.data import SequentialSampler
    from transformers import Trainer, TrainingArguments

    class InOrder(Trainer):  # the plain loop's order: the same batches at the same steps
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

    tokens = torch.randint(0, 64, (24, 12), generator=torch.Generator().manual_seed(1))
    examples = [{"input_ids": t, "labels": t} for t in tokens]
    trained, plain = tiny_mixtral(), tiny_mixtral()
    experts = stacked_experts(trained)
    assert [[tuple(w.shape) for w in layer] for layer in experts] == \
        [[(4, 96, 32), (4, 32, 48)]] * 2  # gate_up_proj, down_proj per layer
    optimizer = OMoE(trained.parameters(), lr=1e-2, experts=experts, **CYCLE)
    args = TrainingArguments(str(tmp_path), per_device_train_batch_size=4, max_steps=6,
                             max_grad_norm=0.0, use_cpu=True, report_to=[], save_strategy="no",
                             logging_strategy="no", dataloader_num_workers=0)
    constant = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    InOrder(model=trained, args=args, train_dataset=examples,
            optimizers=(optimizer, constant)).train()
    assert optimizer.counters["steps"] == 6 and optimizer.counters["projector_updates"] == 1

    reference = OMoE(plain.parameters(), lr=1e-2, experts=stacked_experts(plain), **CYCLE)
    plain.train()
    for step in range(6):
        batch = tokens[4 * step: 4 * step + 4]
        plain(input_ids=batch, labels=batch).loss.backward()
        reference.step()
        reference.zero_grad()
    for p, q in zip(trained.parameters(), plain.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
    assert reference.last_measured["removed"] > 0  # the projection took part of the updates
