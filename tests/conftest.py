"""Shared fixtures: a real fairseq dictionary/task, tiny models built through them, the tiny
classifier exported to ONNX once per test run, and real data prepared once per test process
(movie reviews, CoNLL-2003 sentences, Disfl-QA)."""

import fcntl
import os
from pathlib import Path
from typing import Callable

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


# tiny_model's shape; tests that count per layer or per expert read it from here.
TINY_SHAPE = dict(
    encoder_layers=2,
    encoder_embed_dim=32,
    encoder_ffn_embed_dim=48,
    encoder_attention_heads=4,
    max_positions=64,
    moe_experts=4,
    moe_top_k=2,
)


def tiny_model(task, seed: int = 0, **overrides) -> OMoERobertaModel:
    """A 2-layer model in eval mode, built exactly as fairseq builds it, with a head."""
    torch.manual_seed(seed)
    config = OMoERobertaConfig(**{**TINY_SHAPE, **overrides})
    model = OMoERobertaModel.build_model(config, task)
    model.register_classification_head(HEAD, num_classes=2)
    return model.eval()


def word_tokenizer(symbols: list[str]):
    """A whitespace word-level tokenizer over a dictionary's symbols (no download)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    from omoe_plugin.data.subword import SubwordTokenizer

    tokenizer = Tokenizer(WordLevel({s: i for i, s in enumerate(symbols)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = Whitespace()
    return SubwordTokenizer("tokenizers", tokenizer.to_str())


def tiny_classifier(task, **overrides):
    """The tiny classifier of the export tests (tiny_model, 128 positions) and its serving
    metadata (labels neg, pos; the word tokenizer)."""
    from omoe_plugin.export.classifier import serving_info

    model = tiny_model(task, max_positions=128, **overrides)
    info = serving_info(model.cfg, task.source_dictionary, ["neg", "pos"],
                        word_tokenizer(task.source_dictionary.symbols), source="tiny.pt")
    return model, info


def export(task, out: Path, **overrides):
    """tiny_classifier exported to ONNX at out; the model and its serving metadata."""
    from omoe_plugin.export.onnx_export import export_onnx

    model, info = tiny_classifier(task, **overrides)
    export_onnx(model, info, out)
    return model, info


def once_per_run(tmp_path_factory, name: str, make: Callable[[Path], None]) -> Path:
    """The folder `name`, filled by make(folder) once for the whole test run: the pytest-xdist
    workers share it (the folder above a worker's base temporary folder is the run's), and
    the first to take its lock fills it. What is in it is for reading only."""
    base = tmp_path_factory.getbasetemp()
    out = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name
    out.mkdir(exist_ok=True)
    with open(out / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "done").exists():
            make(out)
            (out / "done").touch()
    return out


@pytest.fixture(scope="session")
def tiny_onnx(task, tmp_path_factory) -> Path:
    """tiny_classifier exported to ONNX (fp32) once for the whole run: read it, do not
    change it (tiny_classifier(task) builds the same model again, for parity checks)."""
    return once_per_run(tmp_path_factory, "tiny_onnx",
                        lambda out: export(task, out / "tiny.onnx")) / "tiny.onnx"


@pytest.fixture(scope="session")
def movie_reviews(tmp_path_factory):
    """The real movie-review data, tokenised and binarised with fairseq-preprocess."""
    from omoe_plugin.data.movie_reviews import prepare

    out = tmp_path_factory.mktemp("movie_reviews")
    sizes = prepare(out, workers=2)
    return out, sizes


def conll_head(text: str, sentences: int) -> str:
    """The first `sentences` sentences of a CoNLL file's text."""
    return "\n\n".join(text.split("\n\n")[:sentences + 1]) + "\n"


@pytest.fixture(scope="session")
def conll(tmp_path_factory):
    """300 / 60 / 60 real CoNLL-2003 sentences, written as files ({split}.txt) and prepared by
    the CLI into data/."""
    from omoe_plugin.data.cli import cli_main as prepare_main
    from omoe_plugin.data.sources import conll2003_texts

    root = tmp_path_factory.mktemp("conll")
    args = ["--format", "conll"]
    texts = conll2003_texts()
    for split, n in (("train", 300), ("valid", 60), ("test", 60)):
        (root / f"{split}.txt").write_text(conll_head(texts[split], n))
        args += [f"--{split}", str(root / f"{split}.txt")]
    prepare_main([str(root / "data"), *args])
    return root


@pytest.fixture(scope="session")
def disflqa(tmp_path_factory):
    """The bundled Disfl-QA, prepared by omoe-prepare-data --corpus disflqa."""
    from omoe_plugin.data.cli import cli_main as prepare_main

    out = tmp_path_factory.mktemp("disflqa") / "data"
    prepare_main([str(out), "--corpus", "disflqa"])
    return out


def pytest_collection_modifyitems(items):
    """The end-to-end files (marked slow) first, in their usual order, the rest after. Each
    worker takes a whole file at a time (--dist loadfile), in this order: the long files then
    run side by side early and the short ones fill in the end, rather than one long file,
    collected last, running alone on one worker while the other has finished."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
