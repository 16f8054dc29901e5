"""The alternating schedule and the optimizer lookup of the omoe_sentence_prediction task."""

from fairseq.optim.adam import FairseqAdam, FairseqAdamConfig

from omoe_plugin.moe import MoEArgs, MoELayer
from omoe_plugin.optim.omoe import FairseqOMoE, OMoEConfig
from omoe_plugin.tasks.omoe_sentence_prediction import find_omoe, phase_of


def test_phase_cycles_accumulate_then_orthogonal():
    names = [phase_of(u, 2, 3).name for u in range(11)]
    assert names == ["accumulate"] * 2 + ["orthogonal"] * 3 + ["accumulate"] * 2 + \
        ["orthogonal"] * 3 + ["accumulate"]
    assert [phase_of(u, 2, 3).position for u in range(6)] == [0, 1, 2, 3, 4, 0]


def test_find_omoe_unwraps_the_fairseq_optimizer():
    layer = MoELayer(MoEArgs(embed_dim=4, ffn_dim=6, num_experts=2))
    wrapper = FairseqOMoE(OMoEConfig(lr=[0.1], omoe_betas="(0.9, 0.98)"), list(layer.parameters()))
    assert find_omoe(wrapper) is wrapper.optimizer
    assert wrapper.optimizer.defaults["betas"] == (0.9, 0.98)
    adam = FairseqAdam(FairseqAdamConfig(lr=[0.1], adam_betas="(0.9, 0.999)"), list(layer.parameters()))
    assert find_omoe(adam) is None
