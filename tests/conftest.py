"""Shared fixtures: a real fairseq dictionary/task and tiny models built through them."""

import pytest
import torch
from fairseq.data import Dictionary
from fairseq.tasks.sentence_prediction import SentencePredictionConfig, SentencePredictionTask

import omoe_plugin
from omoe_plugin.models import OMoERobertaConfig, OMoERobertaModel

omoe_plugin.register()  # every component, as --user-dir user_dir does

HEAD = "sentence_classification_head"


def dictionaries() -> tuple[Dictionary, Dictionary]:
    """A 40-word vocabulary (w0 ... w39) and the labels neg, pos."""
    words, labels = Dictionary(), Dictionary()
    for i in range(40):
        words.add_symbol(f"w{i}")
    for name in ("neg", "pos"):
        labels.add_symbol(name)
    return words, labels


@pytest.fixture(scope="session")
def task() -> SentencePredictionTask:
    return SentencePredictionTask(SentencePredictionConfig(num_classes=2), *dictionaries())


def tiny_model(task, seed: int = 0, **overrides) -> OMoERobertaModel:
    """A 2-layer model in eval mode, built exactly as fairseq builds it, with a head."""
    shape = dict(
        encoder_layers=2,
        encoder_embed_dim=32,
        encoder_ffn_embed_dim=48,
        encoder_attention_heads=4,
        max_positions=64,
        moe_experts=4,
        moe_top_k=2,
    )
    shape.update(overrides)
    torch.manual_seed(seed)
    model = OMoERobertaModel.build_model(OMoERobertaConfig(**shape), task)
    model.register_classification_head(HEAD, num_classes=2)
    return model.eval()


@pytest.fixture(scope="session")
def movie_reviews(tmp_path_factory):
    """The real movie-review data, tokenised and binarised with fairseq-preprocess."""
    from omoe_plugin.data.movie_reviews import prepare

    out = tmp_path_factory.mktemp("movie_reviews")
    sizes = prepare(out, workers=2)
    return out, sizes
