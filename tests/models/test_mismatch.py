"""A checkpoint that does not fit the model stops with one line: the tensor, its two shapes and
the option that fixes it; through fairseq's trainer (which passes model_cfg) as a SystemExit,
which its "please ensure that the architectures match" cannot swallow."""

import pytest

from omoe_plugin.models.mismatch import CheckpointMismatch
from omoe_plugin.tasks.omoe_sentence_prediction import (
    OMoESentencePredictionConfig,
    OMoESentencePredictionTask,
)
from tests.conftest import dictionaries, tiny_model


@pytest.mark.parametrize("theirs,ours,message", (
    (dict(moe_experts=2), {}, r"moe.router.gate.weight is \[2, 32\] in the checkpoint, "
                              r"\[4, 32\] here: pass --moe-experts 2"),
    (dict(moe_expert_ffn_dim=20), {}, "pass --moe-expert-ffn-dim 20"),
    (dict(moe_freq=0), {}, "the checkpoint is a dense encoder .*: upcycle it with "
                           "omoe-upcycle, or train it dense with --moe-freq 0"),
    ({}, dict(moe_freq=0), "the checkpoint has MoE layers .*pass the --moe-freq"),
    ({}, dict(encoder_layers=1), "this model lacks encoder.layers.1.*--encoder-layers"),
))
def test_a_checkpoint_of_another_shape_names_the_option(task, theirs, ours, message):
    with pytest.raises(CheckpointMismatch, match=message):
        tiny_model(task, **ours).load_state_dict(tiny_model(task, **theirs).state_dict())


def test_another_dictionary_names_srcdict(task):
    words, labels = dictionaries()
    words.add_symbol("one-more-word")
    other = OMoESentencePredictionTask(OMoESentencePredictionConfig(num_classes=2), words, labels)
    with pytest.raises(CheckpointMismatch, match=r"dictionary has \d+ symbols, the data's "
                                                 r"\d+: .*omoe-prepare-data --srcdict"):
        tiny_model(task).load_state_dict(tiny_model(other).state_dict())


def test_fairseqs_trainer_gets_one_line_it_cannot_swallow(task):
    narrow = tiny_model(task, moe_expert_ffn_dim=20).state_dict()
    with pytest.raises(SystemExit, match="^cannot load the checkpoint: .*fc1_weight is "
                                         r"\[4, 20, 32\] in the checkpoint, \[4, 48, 32\] here"):
        tiny_model(task).load_state_dict(narrow, model_cfg=tiny_model(task).cfg)
    assert not issubclass(SystemExit, Exception)  # fairseq's `except Exception` lets it by
