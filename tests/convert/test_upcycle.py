"""`split` upcycling (MoEBERT): neuron importance, the assignment of neurons to experts, the
sizes and their errors, equivalence with the dense model, and the omoe-upcycle options."""

import pytest
import torch
from fairseq.tasks.sentence_prediction import SentencePredictionConfig, SentencePredictionTask

from omoe_plugin.convert.checkpoint import load_encoder_checkpoint, save_encoder_checkpoint
from omoe_plugin.convert.cli import upcycle_main
from omoe_plugin.convert.upcycle import (
    dense_importance,
    drop_neurons_,
    neuron_importance,
    split_assignment,
    split_neurons,
    split_sizes,
    upcycle,
)
from omoe_plugin.models import OMoERobertaConfig, OMoERobertaModel
from tests.conftest import HEAD, tiny_model


def test_importance_is_the_summed_norm_of_what_pruning_a_neuron_removes():
    activations = torch.tensor([[1.0, -2.0, 0.0], [3.0, 0.0, -1.0]])  # [N = 2 tokens, h = 3]
    fc2_weight = torch.tensor([[3.0, 0.0, 1.0], [4.0, 1.0, 0.0]])  # [d = 2, h]: norms 5, 1, 1
    # neuron j: sum_x |a_j(x)| * ||W2[:, j]|| = (1 + 3) * 5, (2 + 0) * 1, (0 + 1) * 1
    torch.testing.assert_close(neuron_importance(activations, fc2_weight),
                               torch.tensor([20.0, 2.0, 1.0]))
    removed = [sum(float((a[j] * fc2_weight[:, j]).norm()) for a in activations) for j in range(3)]
    assert removed == [20.0, 2.0, 1.0]


def test_split_shares_the_top_neurons_and_deals_the_rest_round_robin():
    importance = torch.tensor([5.0, 9.0, 1.0, 7.0, 3.0, 8.0, 2.0, 6.0, 4.0, 0.0])
    # importance order: 1 5 | 3 7 0 8 | 4 6 2 9: two shared, then one to each expert per round
    neurons = split_neurons(importance, num_experts=4, shared=2)
    assert neurons.tolist() == [[1, 5, 3, 4], [1, 5, 7, 6], [1, 5, 0, 2], [1, 5, 8, 9]]


@pytest.mark.parametrize("ffn_dim,experts,shared",
                         ((48, 4, 8), (1536, 4, 256), (30, 3, 0), (7, 1, 7)))
def test_every_neuron_is_in_an_expert_shared_ones_in_all_the_rest_in_one(ffn_dim, experts, shared):
    importance = torch.rand(ffn_dim, generator=torch.Generator().manual_seed(ffn_dim))
    neurons = split_neurons(importance, experts, shared)
    assert neurons.shape == (experts, split_sizes(ffn_dim, experts, shared)[1])
    top = set(torch.topk(importance, shared).indices.tolist())
    counts = torch.bincount(neurons.flatten(), minlength=ffn_dim)
    assert all(counts[j] == (experts if j in top else 1) for j in range(ffn_dim))
    for row in neurons:  # each expert's dealt neurons are in decreasing importance
        assert torch.all(importance[row[shared:]].diff() <= 0)


def test_split_sizes_defaults_and_either_option_determines_the_other():
    assert split_sizes(1536, 4) == (256, 576)  # a sixth shared
    assert split_sizes(128, 4) == (24, 50)  # the smallest count >= 128 / 6 that deals out evenly
    assert split_sizes(1536, 4, expert_dim=576) == split_sizes(1536, 4, shared=256) == (256, 576)
    assert split_sizes(1536, 4, shared=0) == (0, 384)
    assert split_sizes(48, 1, expert_dim=48) == (0, 48)


@pytest.mark.parametrize(
    "kwargs,message",
    (
        (dict(shared=3), r"leaves 1533 neurons, which cannot be dealt out evenly to 4 experts"),
        (dict(shared=-4), "between 0 and the FFN size 1536"),
        (dict(shared=1540), "between 0 and the FFN size 1536"),
        (dict(expert_dim=500), r"cannot split 1536 neurons into 4 experts.*e\.g\. 576"),
        (dict(expert_dim=2000), "cannot split 1536 neurons"),
        (dict(shared=600, expert_dim=576), "disagree: 600 shared"),
    ),
)
def test_impossible_split_sizes_say_what_would_work(kwargs, message):
    with pytest.raises(ValueError, match=message):
        split_sizes(1536, 4, **kwargs)


def test_one_expert_split_reproduces_the_dense_model(task):
    dense = tiny_model(task, seed=1, moe_freq=0)
    importance = torch.rand(48, generator=torch.Generator().manual_seed(0))
    neurons = split_neurons(importance, num_experts=1, shared=0)
    assert not torch.equal(neurons[0], torch.arange(48))  # a real permutation of the neurons
    moe_cfg, state = upcycle(dense.cfg, dense.state_dict(), num_experts=1, moe_freq=1,
                             neurons={0: neurons, 1: neurons})
    assert moe_cfg.moe_expert_ffn_dim == 48
    moe = tiny_model(task, moe_experts=1, moe_top_k=1, moe_expert_ffn_dim=48)
    moe.load_state_dict(state, strict=True)
    x = torch.randint(4, 40, (3, 11))
    torch.testing.assert_close(moe(x, classification_head_name=HEAD)[0],
                               dense(x, classification_head_name=HEAD)[0], atol=1e-6, rtol=1e-5)


def test_drop_reinitialises_each_experts_own_share_of_neurons(task):
    dense = tiny_model(task, seed=1, moe_freq=0)
    state = dense.state_dict()
    for i in range(2):  # BERT initialises biases to zero; a pretrained FFN's are not
        state[f"encoder.layers.{i}.fc1.bias"].normal_(generator=torch.Generator().manual_seed(i))
    _, copied = upcycle(dense.cfg, state, num_experts=4, moe_freq=1, seed=3)
    moe_cfg, dropped = upcycle(dense.cfg, state, num_experts=4, moe_freq=1, seed=3)
    drop_neurons_(moe_cfg, dropped, ratio=0.25, seed=3)
    for i in range(2):
        prefix = f"encoder.layers.{i}.moe."
        fc1, fc1_b, fc2 = (dropped[prefix + "experts." + n]
                           for n in ("fc1_weight", "fc1_bias", "fc2_weight"))
        kept = (fc1 == copied[prefix + "experts.fc1_weight"]).all(dim=2)  # [E, h]
        assert kept.sum(dim=1).tolist() == [36] * 4  # 48 - 12 re-initialised, per expert
        assert torch.equal(kept, (fc2 == copied[prefix + "experts.fc2_weight"]).all(dim=1))
        assert torch.equal(kept, fc1_b == copied[prefix + "experts.fc1_bias"])
        assert len({tuple(k.tolist()) for k in kept}) == 4  # each expert drops its own
        dense_fc1 = state[f"encoder.layers.{i}.fc1.weight"]
        drawn = fc1[~kept]  # the re-initialised rows follow the dense weight's statistics
        assert abs(float(drawn.std() / dense_fc1.std()) - 1) < 0.1
        assert torch.equal(dropped[prefix + "router.gate.weight"],
                           copied[prefix + "router.gate.weight"])
        assert torch.equal(dropped[prefix + "experts.fc2_bias"],
                           copied[prefix + "experts.fc2_bias"])
    with pytest.raises(ValueError, match="--drop-ratio"):
        drop_neurons_(moe_cfg, dropped, ratio=1.5)


@pytest.fixture(scope="module")
def dense_on_real_data(movie_reviews, tmp_path_factory):
    """A small random dense model on the real movie-review data's dictionary, saved."""
    data = movie_reviews[0]
    words = SentencePredictionTask.load_dictionary(str(data / "input0" / "dict.txt"))
    task = SentencePredictionTask(SentencePredictionConfig(num_classes=2), words, words)
    cfg = OMoERobertaConfig(encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=48,
                            encoder_attention_heads=4, max_positions=128, moe_freq=0)
    torch.manual_seed(0)
    model = OMoERobertaModel.build_model(cfg, task)
    path = tmp_path_factory.mktemp("dense") / "dense.pt"
    save_encoder_checkpoint(path, cfg, model.state_dict())
    return path, data


def test_importance_counts_real_tokens_only(dense_on_real_data):
    path, data = dense_on_real_data
    cfg, state = load_encoder_checkpoint(path)
    alone = dense_importance(cfg, state, data, max_tokens=600, batch_size=1)  # no padding
    padded = dense_importance(cfg, state, data, max_tokens=600, batch_size=16)
    assert sorted(alone) == [0, 1] and alone[0].shape == (48,)
    for layer in alone:
        torch.testing.assert_close(padded[layer], alone[layer], rtol=1e-4, atol=1e-4)
    more = dense_importance(cfg, state, data, max_tokens=1200)
    assert torch.all(more[0] > alone[0])  # every token adds |a_j(x)| ||W2[:, j]|| > 0 (GELU)


def test_split_upcycle_on_real_data_uses_the_importance_order(dense_on_real_data):
    path, data = dense_on_real_data
    cfg, state = load_encoder_checkpoint(path)
    neurons = split_assignment(cfg, state, data, num_experts=4, shared=8, max_tokens=600)
    moe_cfg, moe_state = upcycle(cfg, state, num_experts=4, neurons=neurons)
    assert (moe_cfg.moe_experts, moe_cfg.moe_expert_ffn_dim) == (4, 18)
    top = torch.topk(dense_importance(cfg, state, data, max_tokens=600)[1], 8).indices
    fc1 = moe_state["encoder.layers.1.moe.experts.fc1_weight"]  # [E, 18, d]
    shared = state["encoder.layers.1.fc1.weight"][top]  # [8, d]: the top neurons' weights
    torch.testing.assert_close(fc1[:, :8], shared.expand(4, -1, -1))


@pytest.mark.parametrize(
    "args,message",
    (
        (["--split-shared", "8"], "need --method split"),
        (["--method", "drop", "--split-shared", "8"], "need --method split"),
        (["--drop-ratio", "0.5"], "--drop-ratio needs --method drop"),
        (["--method", "drop", "--drop-ratio", "2"], "--drop-ratio must be in [0, 1]"),
        (["--method", "split"], "needs --importance-data"),
        (["--method", "split", "--importance-data", "DATA", "--split-shared", "5"],
         "cannot be dealt out evenly"),
        (["--method", "split", "--importance-data", "DATA", "--moe-expert-ffn-dim", "19"],
         "cannot split 48 neurons into 4 experts"),
        (["--method", "split", "--importance-data", "MISSING"], "has no input0/dict.txt"),
        (["--method", "split", "--importance-data", "DATA", "--importance-tokens", "0"],
         "--importance-tokens must be >= 1"),
    ),
)
def test_bad_upcycle_options_stop_with_a_message(dense_on_real_data, tmp_path, capsys, args,
                                                 message):
    path, data = dense_on_real_data
    args = [str(data) if a == "DATA" else str(tmp_path / "none") if a == "MISSING" else a
            for a in args]
    with pytest.raises(SystemExit) as stop:
        upcycle_main([str(path), "--out", str(tmp_path / "moe.pt"), *args])
    assert message in str(stop.value.code) + capsys.readouterr().err
    assert not (tmp_path / "moe.pt").exists()
