"""`omoe-export --raw-text`: the raw-text model (tokenizer in the graph, onnxruntime-extensions)
of tiny exported classifiers with each kind of tokenizer the exporter embeds (BERT's own
WordPiece, a sentencepiece and a GPT-2 byte-level BPE trained on the movie reviews) gives,
on real movie-review sentences and on long texts cut to the model's positions, exactly the
token ids of the Python tokenizer path and its logits."""

import numpy as np
import pytest
from fairseq.data import Dictionary
from fairseq.tasks.sentence_prediction import SentencePredictionConfig, SentencePredictionTask

from omoe_plugin.data.movie_reviews import parse, wordpiece_tokenizer
from omoe_plugin.data.sources import rated_lines
from omoe_plugin.data.subword import SubwordTokenizer, gpt2_bpe, train_sentencepiece
from omoe_plugin.export.classifier import serving_info
from omoe_plugin.export.onnx_export import cli_main, export_onnx
from omoe_plugin.export.sentences import OMoEClassifier
from omoe_plugin.export.serving_info import read_metadata
from omoe_plugin.export.text_model import (INPUT_KEY, build_text_model, compare_ids,
                                           text_model_path, text_session)
from tests.conftest import tiny_model

pytest.importorskip("onnxruntime_extensions")  # pip install 'omoe-plugin[text]'

MAX_POSITIONS = 64  # short, so that many joined sentences run past it


@pytest.fixture(scope="module")
def reviews() -> list[str]:
    return [r.text for r in parse(rated_lines())]


def gpt2_tokenizer(texts: list[str], directory) -> SubwordTokenizer:
    """GPT-2-format BPE files (encoder.json, vocab.bpe) of a byte-level BPE trained on texts,
    read as omoe-prepare-data reads GPT-2's own (which are in no package)."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=600, show_progress=False)
    bpe.save_model(str(directory))
    return gpt2_bpe(directory / "vocab.json", directory / "merges.txt")


TOKENIZERS = {
    "wordpiece": lambda texts, _: wordpiece_tokenizer(),  # the demo's: all-MiniLM-L6-v2's
    "sentencepiece": lambda texts, _: train_sentencepiece(texts, 500),
    "gpt2": gpt2_tokenizer,
}
SPECIALS = {"[PAD]", "[UNK]", "[CLS]", "[SEP]"}  # not in the fairseq dictionary of BERT's vocab


@pytest.fixture(scope="module", params=list(TOKENIZERS))
def exported(request, reviews, tmp_path_factory):
    """A tiny classifier whose dictionary is its tokenizer's vocabulary (as the binarised data's
    is), exported, and its raw-text model."""
    out = tmp_path_factory.mktemp(request.param)
    tokenizer = TOKENIZERS[request.param](reviews[:3000], out)
    words, labels = Dictionary(), Dictionary()
    for token in tokenizer.vocabulary():
        if token not in SPECIALS:
            words.add_symbol(token)
    for name in ("neg", "pos"):
        labels.add_symbol(name)
    task = SentencePredictionTask(SentencePredictionConfig(num_classes=2), words, labels)
    model = tiny_model(task, max_positions=MAX_POSITIONS)
    info = serving_info(model.cfg, words, ["neg", "pos"], tokenizer, source="tiny.pt")
    export_onnx(model, info, out / "model.onnx")
    build_text_model(out / "model.onnx", text_model_path(out / "model.onnx"))
    return out / "model.onnx", out / "model.text.onnx"


def test_ids_and_logits_equal_the_python_tokenizer_path(exported, reviews):
    path, text_path = exported
    python = OMoEClassifier(path, threads=1)
    in_graph = text_session(text_path, threads=1)
    sentences = reviews[3000:3300]  # not the ones the small tokenizers were trained on
    long = [" ".join(reviews[i:i + n]) for i, n in zip(range(4000, 4400, 20), [2, 4, 8] * 7)]
    assert compare_ids(python.info, in_graph, sentences + long) == []
    assert sum(python.encode(text)[1] for text in long) >= 10  # cut as OMoEClassifier cuts
    for text in sentences[:200] + long:
        ids, truncated = python.encode(text)
        want = python.session.run(None, {"src_tokens": np.array([ids])})
        logits, experts, src_tokens, cut = in_graph.run(None, {"text": np.array([text])})
        np.testing.assert_allclose(logits, want[0], atol=1e-5, rtol=0)
        assert (experts == want[1]).all() and src_tokens[0].tolist() == ids
        assert bool(cut) == truncated


def test_raw_text_model_keeps_the_metadata_and_takes_one_text(exported):
    path, text_path = exported
    props = read_metadata(text_path)
    assert props[INPUT_KEY] == "text"
    assert {k: v for k, v in props.items() if k != INPUT_KEY} == read_metadata(path)
    in_graph = text_session(text_path, threads=1)
    assert [i.name for i in in_graph.get_inputs()] == ["text"]
    with pytest.raises(Exception, match="dimensions"):  # two texts would read as a pair
        in_graph.run(None, {"text": np.array(["one", "two"])})


def test_tokenizers_and_models_it_cannot_put_in_a_graph_are_refused(tiny_onnx, tmp_path):
    # tiny_onnx has a WordLevel tokenizer: no extensions operator
    with pytest.raises(ValueError, match="cannot be put in the graph"):
        build_text_model(tiny_onnx, tmp_path / "words.text.onnx")
    assert not (tmp_path / "words.text.onnx").exists()


def test_export_option_refuses_early_without_a_checkpoint(tmp_path):
    with pytest.raises(SystemExit, match="omoe-export"):
        cli_main([str(tmp_path / "missing.pt"), "--out", str(tmp_path / "m.onnx"), "--raw-text"])
    assert not list(tmp_path.iterdir())
