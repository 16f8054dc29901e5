"""omoe_roberta: MoE layer placement, padding invariance, dense equivalence, bad options."""

import dataclasses

import pytest
import torch
from omegaconf import OmegaConf

from omoe_plugin.models import OMoERobertaConfig, OMoERobertaModel
from omoe_plugin.models.encoder import EncoderLayer
from tests.conftest import HEAD, tiny_model


def tokens(task, rows: list[list[int]], left_pad: bool = False) -> torch.Tensor:
    """A padded batch of word ids (offset past the special symbols), <s> first, </s> last."""
    d = task.source_dictionary
    seqs = [[d.bos()] + [d.nspecial + w for w in row] + [d.eos()] for row in rows]
    width = max(map(len, seqs))
    pad = lambda s: [d.pad()] * (width - len(s)) + s if left_pad else s + [d.pad()] * (width - len(s))
    return torch.tensor([pad(s) for s in seqs])


@pytest.mark.parametrize("freq,moe_layers", ((1, [0, 1, 2, 3]), (2, [1, 3]), (4, [3]), (0, [])))
def test_moe_freq_places_moe_layers(task, freq, moe_layers):
    model = tiny_model(task, encoder_layers=4, moe_freq=freq)
    layers = model.encoder.layers
    assert [i for i, layer in enumerate(layers) if layer.moe is not None] == moe_layers
    _, extra = model(tokens(task, [[1, 2, 3]]), classification_head_name=HEAD)
    assert len(extra["moe_aux"]) == len(moe_layers)


@pytest.mark.parametrize("left_pad", (False, True))
def test_padding_does_not_change_a_sentence(task, left_pad):
    model = tiny_model(task)
    rows = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [9]]
    batch = tokens(task, rows, left_pad)
    features, _ = model(batch)
    for i, row in enumerate(rows):
        alone, _ = model(tokens(task, [row]))
        real = batch[i].ne(task.source_dictionary.pad())
        torch.testing.assert_close(features[i][real], alone[0], atol=1e-5, rtol=1e-4)


def test_padding_does_not_change_the_logits(task):
    model = tiny_model(task)
    rows = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [9]]
    batch, _ = model(tokens(task, rows), classification_head_name=HEAD)
    for i, row in enumerate(rows):
        alone, _ = model(tokens(task, [row]), classification_head_name=HEAD)
        torch.testing.assert_close(batch[i], alone[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("batch,seq", ((1, 1), (3, 9), (8, 33)))
def test_one_expert_model_equals_dense_model(task, batch, seq):
    dense = tiny_model(task, seed=3, moe_freq=0)
    moe = tiny_model(task, seed=4, moe_experts=1, moe_top_k=1)
    state = {k: v for k, v in dense.state_dict().items() if ".fc1." not in k and ".fc2." not in k}
    moe.load_state_dict(state, strict=False)
    for dense_layer, moe_layer in zip(dense.encoder.layers, moe.encoder.layers):
        moe_layer.moe.experts.copy_dense_(dense_layer.fc1, dense_layer.fc2)
    torch.manual_seed(5)
    rows = torch.randint(0, 30, (batch, seq)).tolist()
    x = tokens(task, rows)
    assert torch.equal(
        moe(x, classification_head_name=HEAD)[0], dense(x, classification_head_name=HEAD)[0]
    )


def test_features_without_head(task):
    model = tiny_model(task)
    features, extra = model(tokens(task, [[1, 2]]), return_all_hiddens=True)
    assert features.shape == (1, 4, 32)
    assert len(extra["inner_states"]) == 3  # embeddings + 2 layers


@pytest.mark.parametrize(
    "overrides,option",
    (
        (dict(moe_freq=-1), "--moe-freq"),
        (dict(moe_freq=3), "--moe-freq"),
        (dict(moe_experts=0), "--moe-experts"),
        (dict(moe_experts=2, moe_top_k=3), "--moe-top-k"),
        (dict(encoder_attention_heads=5), "--encoder-attention-heads"),
        (dict(moe_expert_ffn_dim=-1), "--moe-expert-ffn-dim"),
    ),
)
def test_invalid_options_name_the_option(task, overrides, option):
    with pytest.raises(ValueError, match=option):
        tiny_model(task, **overrides)


def test_layers_are_post_ln():
    cfg = OMoERobertaConfig(encoder_embed_dim=8, encoder_ffn_embed_dim=12,
                            encoder_attention_heads=2, max_positions=16)
    layer = EncoderLayer(cfg, moe=None).eval()
    x = torch.randn(2, 3, 8) * 10 + 5
    y, aux = layer(x, torch.zeros(2, 3, dtype=torch.bool), torch.ones(2, 3, dtype=torch.bool))
    assert aux is None
    torch.testing.assert_close(y.mean(-1), torch.zeros(2, 3), atol=1e-5, rtol=0)


@pytest.mark.parametrize("expert_dim,hidden", ((0, 48), (20, 20)))
def test_expert_ffn_dim_sizes_the_experts_only(task, expert_dim, hidden):
    model = tiny_model(task, moe_freq=2, encoder_layers=2, moe_expert_ffn_dim=expert_dim)
    dense, moe = model.encoder.layers
    assert dense.fc1.out_features == 48  # --encoder-ffn-embed-dim
    assert moe.moe.experts.fc1_weight.shape == (4, hidden, 32)
    assert moe.moe.experts.fc2_weight.shape == (4, 32, hidden)



def test_a_config_saved_before_expert_ffn_dim_existed_still_builds(task):
    """fairseq rebuilds a checkpoint's model from its stored config, without our defaults."""
    fields = dataclasses.asdict(OMoERobertaConfig(encoder_embed_dim=32, encoder_ffn_embed_dim=48,
                                                  encoder_attention_heads=4, max_positions=64))
    del fields["moe_expert_ffn_dim"]
    model = OMoERobertaModel.build_model(OmegaConf.create(fields), task)
    assert model.encoder.layers[0].moe.experts.fc1_weight.shape == (4, 48, 32)


def test_segments_start_after_the_first_eos():
    from omoe_plugin.models.encoder import segments

    eos, pad = 2, 1
    src = torch.tensor([[0, 5, 6, eos, 7, 8, eos, pad], [0, 5, eos, eos, 7, eos, pad, pad],
                        [0, 5, 6, 7, eos, pad, pad, pad]])
    assert segments(src, eos).tolist() == [[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1, 1],
                                           [0, 0, 0, 0, 0, 1, 1, 1]]


def test_a_checkpoint_saved_before_segment_embeddings_loads_and_reads_as_before(task):
    model = tiny_model(task)
    model.encoder.embed_segments.weight.data.normal_()  # a pair-trained model's segment 1
    state = {k: v for k, v in model.state_dict().items() if "embed_segments" not in k}
    old = tiny_model(task, seed=1)
    old.load_state_dict(state)
    assert not old.encoder.embed_segments.weight.any()
    single = tokens(task, [[1, 2, 3], [4, 5]])
    model.encoder.embed_segments.weight.data[0] = 0  # segment 0 is zero by construction
    real = single.ne(task.source_dictionary.pad())
    torch.testing.assert_close(old(single)[0][real], model(single)[0][real])
