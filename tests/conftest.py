"""Shared fixtures: a real fairseq dictionary/task and tiny models built through them."""

import os

# One thread per test process, inherited by the CLIs the tests start: the suite runs one
# process per core (pytest-xdist), and the tiny models gain nothing from a second thread, while
# two processes each spinning two OpenMP threads on two cores run many times slower.
os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from fairseq.data import Dictionary
from fairseq.tasks.sentence_prediction import SentencePredictionConfig, SentencePredictionTask

import omoe_plugin
from omoe_plugin.models import OMoERobertaConfig, OMoERobertaModel

omoe_plugin.register()  # every component, as --user-dir user_dir does
torch.set_num_threads(1)

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
