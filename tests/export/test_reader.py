"""OMoEReader on an exported tiny extractive-QA model: questions and contexts windowed as
omoe-prepare-data windows them, the best span over all windows as PyTorch picks it, answers as
context characters, and per-item failures."""

import dataclasses

import pytest
import torch

from omoe_plugin.export.classifier import ExportedClassifier, serving_info
from omoe_plugin.export.onnx_export import export_onnx
from omoe_plugin.export.reader import OMoEReader
from omoe_plugin.models.omoe_roberta import SPAN_HEAD
from omoe_plugin.spans import best_span
from tests.conftest import tiny_model, word_tokenizer


@pytest.fixture(scope="module")
def reader(task, tmp_path_factory):
    model = tiny_model(task, max_positions=24)
    model.register_token_head(SPAN_HEAD, num_tags=2)
    info = serving_info(model.cfg, task.source_dictionary, ["start", "end"],
                        word_tokenizer(task.source_dictionary.symbols), pairs=True)
    info = dataclasses.replace(info, span_qa=True, max_answer_tokens=4)
    path = tmp_path_factory.mktemp("reader") / "reader.onnx"
    export_onnx(model.eval(), info, path, head=SPAN_HEAD)
    return model, OMoEReader(path, threads=1, stride=4, max_question_tokens=3)


def test_long_contexts_are_read_in_windows_and_the_best_span_wins(reader):
    model, served = reader
    question = "w1 w2 w3 w4 w5"  # cut to its first 3 sub-words
    context = " ".join(f"w{i % 30}" for i in range(40))
    tokens, offsets = served.tokenizer.tokenize_with_offsets(context)
    windows = served.windows(question, tokens)
    size = 24 - 3 - 3  # positions less <s>, the question's 3 sub-words and two </s>
    assert [offset for _, _, offset, _ in windows] == list(range(0, 40 - size + 4, 4))
    assert all(len(ids) <= 24 and ids[4] == served.info.eos for ids, *_ in windows)
    best = []
    with torch.no_grad():
        for ids, first, offset, length in windows:
            logits = ExportedClassifier(model, SPAN_HEAD)(torch.tensor([ids]))[0][0].numpy()
            score, a, b = best_span(logits[:, 0], logits[:, 1], first, length, 4)
            best.append((score, a - first + offset, b - first + offset))
    _, a, b = max(best)
    [answer] = served.predict([(question, context)])
    assert (answer.start, answer.end) == (offsets[a][0], offsets[b][1])
    assert answer.text == context[answer.start:answer.end] and b - a < 4


def test_a_bad_item_costs_only_itself(reader):
    _, served = reader
    answers = served.predict([("w1", "w2 w3"), "w1 w2", ("w1", ""), ("w1", None), ("w2", "w4")])
    assert [a.to_json().get("error") for a in answers] == [
        None, "give (question, context), two texts", "the context is empty",
        "the context is NoneType, not a str", None]
    assert answers[4].text == "w4"
