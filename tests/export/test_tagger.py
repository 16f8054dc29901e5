"""OMoETagger on an exported tiny token-tagging model: words cut as CoNLL writes them, tags
read on each word's first sub-word, long texts tagged in pieces, pre-split words tagged as
given, entities as seqeval's spans with character offsets, and per-item failures."""

import pytest
import torch

from omoe_plugin.export.classifier import ExportedClassifier, serving_info
from omoe_plugin.export.onnx_export import export_onnx
from omoe_plugin.export.tagger import WORD, OMoETagger
from omoe_plugin.models.omoe_roberta import TOKEN_HEAD
from tests.conftest import tiny_model, word_tokenizer

TAGS = ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]


@pytest.fixture(scope="module")
def tagger(task, tmp_path_factory):
    model = tiny_model(task, max_positions=16)
    model.register_token_head(TOKEN_HEAD, num_tags=len(TAGS))
    info = serving_info(model.cfg, task.source_dictionary, TAGS,
                        word_tokenizer(task.source_dictionary.symbols), tagging=True)
    path = tmp_path_factory.mktemp("tagger") / "tagger.onnx"
    export_onnx(model.eval(), info, path, head=TOKEN_HEAD)
    return model, OMoETagger(path, threads=1)


def test_entities_are_seqeval_spans_with_character_offsets():
    text = "Peter Blackburn visited the U.S. today"
    words = [(m.group(), m.start(), m.end()) for m in WORD.finditer(text)]
    assert [w for w, _, _ in words] == ["Peter", "Blackburn", "visited", "the", "U.S", ".",
                                        "today"]
    tags = [("B-PER", 0.9), ("I-PER", 0.7), ("O", 1.0), ("O", 1.0), ("B-LOC", 0.6),
            ("O", 1.0), ("O", 1.0)]
    entities = OMoETagger._tagged(text, words, tags).entities
    assert [(e.text, e.type, e.start, e.end, e.score) for e in entities] == [
        ("Peter Blackburn", "PER", 0, 15, 0.8), ("U.S", "LOC", 28, 31, 0.6)]


def test_each_word_is_tagged_on_its_first_sub_word_as_pytorch_does(tagger):
    model, served = tagger
    [tagged] = served.predict(["w1 w2, w3"])
    assert [w for w, _ in tagged.words] == ["w1", "w2", ",", "w3"]
    [(ids, firsts)] = served._pieces([(w, 0, 0) for w, _ in tagged.words])
    with torch.no_grad():
        logits = ExportedClassifier(model, TOKEN_HEAD)(torch.tensor([ids]))[0][0]
    assert [t for _, t in tagged.words] == [TAGS[i] for i in logits[firsts].argmax(-1)]


def test_a_long_text_is_tagged_in_pieces_and_split_words_as_given(tagger):
    _, served = tagger
    text = " ".join(f"w{i % 30}" for i in range(40))  # 40 words, 16 positions: 3 pieces
    pieces = served._pieces([(m.group(), 0, 0) for m in WORD.finditer(text)])
    assert len(pieces) == 3 and all(len(ids) <= 16 for ids, _ in pieces)
    [tagged] = served.predict([text])
    assert len(tagged.words) == 40
    words = ["w1,w2", "w3"]  # the cutter would make three words of the first
    [split] = served.predict([words])
    assert [w for w, _ in split.words] == words
    for entity in split.entities:
        assert "w1,w2 w3"[entity.start:entity.end] == entity.text


def test_a_bad_item_costs_only_itself(tagger):
    _, served = tagger
    answers = served.predict(["w1 w2", "", ["w1", "two words"], [], 7, "w3"])
    assert [a.to_json().get("error") for a in answers] == [
        None, "the text is empty", "word 1 holds white space: give one word per item",
        "no words", "the text is int, not a str", None]
    assert len(answers[5].words) == 1
