"""OMoEClassifier and omoe-infer's line handling on an exported tiny model: tokenisation as in
training, truncation, batching that does not change results, and bad input that costs only
its own line."""

import io
import json
import select
import subprocess

import numpy as np
import onnx
import pytest
import torch

from omoe_plugin.export import runtime
from omoe_plugin.export.inference import classify_stream, load_model
from omoe_plugin.export.serving_info import read_metadata
from omoe_plugin.export.sentences import OMoEClassifier
from omoe_plugin.export.classifier import ExportedClassifier, serving_info
from omoe_plugin.export.onnx_export import export_onnx
from tests.cli import BIN
from tests.conftest import HEAD, tiny_classifier, tiny_model, word_tokenizer


@pytest.fixture(scope="module")
def exported(task, tiny_onnx):
    return tiny_classifier(task)[0], tiny_onnx, OMoEClassifier(tiny_onnx, threads=1)


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(f"w{i}" for i in rng.integers(0, 40, size=rng.integers(1, 30)))
            for _ in range(n)]


def test_encode_wraps_sentences_as_in_training_and_truncates(exported):
    _, _, classifier = exported
    info = classifier.info
    ids, truncated = classifier.encode("w3 w7 unknownword")
    words = [classifier.index["w3"], classifier.index["w7"], info.unk]
    assert ids == [info.bos, *words, info.eos] and not truncated
    ids, truncated = classifier.encode(" ".join(["w1"] * 500))
    assert len(ids) == info.max_positions and truncated and ids[-1] == info.eos
    with pytest.raises(ValueError, match="empty"):
        classifier.encode("   ")


def test_predictions_match_pytorch_whatever_the_batch_size(exported):
    model, _, classifier = exported
    texts = sentences(23)
    by_one = classifier.predict(texts, batch_size=1)
    by_seven = classifier.predict(texts, batch_size=7)
    for a, b in zip(by_one, by_seven):
        assert a.label == b.label
        np.testing.assert_allclose(list(a.probabilities.values()),
                                   list(b.probabilities.values()), atol=1e-5)
    with torch.no_grad():
        for text, prediction in zip(texts, by_one):
            tokens = torch.tensor([classifier.encode(text)[0]])
            probs = torch.softmax(ExportedClassifier(model, HEAD)(tokens)[0][0], -1)
            np.testing.assert_allclose(list(prediction.probabilities.values()), probs.numpy(),
                                       atol=1e-5)
            assert prediction.label == classifier.labels[int(probs.argmax())]


def test_a_bad_line_costs_only_itself(exported):
    _, _, classifier = exported
    good = sentences(5, seed=1)
    stream = io.BytesIO(b"\n".join([good[0].encode(), b"", good[1].encode(), b"\xff\xfe w1",
                                    " ".join(["w2"] * 300).encode(), good[2].encode() + b"\r",
                                    b"   "]) + b"\n")
    out = io.StringIO()
    failed = classify_stream(classifier, stream, out, batch_size=2)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["line"] for r in records] == list(range(1, 8)) and failed == 3
    assert records[1]["error"] == "empty line" and records[6]["error"] == "empty line"
    assert "UTF-8" in records[3]["error"]
    assert records[4]["truncated"] is True and "label" in records[4]
    expected = classifier.predict([good[0], good[1], good[2]])
    assert [records[i]["label"] for i in (0, 2, 5)] == [p.label for p in expected]


def test_omoe_infer_answers_a_line_before_the_next_is_written(exported):
    _, path, _ = exported
    infer = subprocess.Popen([str(BIN / "omoe-infer"), str(path), "--threads", "1"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        infer.stdin.write("w1 w2 w3\n")
        infer.stdin.flush()  # the pipe stays open: no second line, no end of input
        ready, _, _ = select.select([infer.stdout], [], [], 60)
        assert ready, "omoe-infer waited for more input before answering"
        first = json.loads(infer.stdout.readline())
        assert first["line"] == 1 and "label" in first
        infer.stdin.write("w4\tw5\n")
        infer.stdin.close()
        second = json.loads(infer.stdout.readline())
        assert second == {"line": 2, "error": "expected one text, found 2 tab-separated fields"}
        assert infer.wait(60) == 1
    finally:
        infer.kill()


def test_a_long_line_is_cut_with_a_note_and_the_items_are_checked(exported):
    _, _, classifier = exported
    stream = io.BytesIO(("w1 " * 5000).encode() + b"\n")
    out = io.StringIO()
    assert classify_stream(classifier, stream, out, batch_size=4, max_chars=30) == 0
    record = json.loads(out.getvalue())
    assert record["note"] == "cut to its first 30 characters" and "truncated" not in record
    with pytest.raises(TypeError, match="wrap one text in a list"):
        classifier.predict("w1 w2")
    answers = classifier.predict(["w1", None, b"w2", "\ud800 w3", ("w1", "w2"), "", "w4"])
    assert [a.to_json().get("error") for a in answers] == [
        None, "the text is NoneType, not a str", "the text is bytes, not a str",
        "the text is not valid Unicode (a lone surrogate at character 0)",
        "this model classifies single sentences: give one text, not a pair",
        "the text is empty", None]
    assert answers[0].label in classifier.labels and answers[6].label in classifier.labels


def test_files_that_are_not_omoe_models_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError):
        OMoEClassifier(tmp_path / "missing.onnx")
    (tmp_path / "text.onnx").write_text("not a model")
    with pytest.raises(ValueError, match="not a loadable ONNX model"):
        OMoEClassifier(tmp_path / "text.onnx")
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    onnx.save(onnx.helper.make_model(graph), str(tmp_path / "foreign.onnx"))
    with pytest.raises(ValueError, match="not written by omoe-export"):
        OMoEClassifier(tmp_path / "foreign.onnx")


def test_metadata_is_read_without_a_session_and_the_model_opens_one(exported, monkeypatch):
    _, path, classifier = exported
    assert read_metadata(path) == classifier.session.get_modelmeta().custom_metadata_map
    opened = []
    real = runtime.session
    monkeypatch.setattr(runtime, "session", lambda *a: opened.append(a) or real(*a))
    served = load_model(path, threads=1)
    assert type(served) is OMoEClassifier and len(opened) == 1
    assert served.predict(["w1 w2"])[0].probabilities == pytest.approx(
        classifier.predict(["w1 w2"])[0].probabilities)


def test_spinning_is_a_session_setting_and_changes_no_answer(exported):
    _, path, classifier = exported
    spin = lambda model: model.session.get_session_options().get_session_config_entry(
        "session.intra_op.allow_spinning")
    resting = load_model(path, threads=1, spinning=False)
    assert (spin(classifier), spin(resting)) == ("1", "0")
    texts = sentences(8)
    assert [p.probabilities for p in resting.predict(texts)] == \
        [p.probabilities for p in classifier.predict(texts)]


def test_a_truncated_model_file_is_refused_with_its_path(exported, tmp_path):
    _, path, _ = exported
    (tmp_path / "cut.onnx").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="cut.onnx is not a loadable ONNX model"):
        load_model(tmp_path / "cut.onnx")


def test_a_regression_head_serves_values(task, tmp_path):
    model = tiny_model(task, max_positions=64)
    model.register_classification_head("rating", num_classes=1)
    info = serving_info(model.cfg, task.source_dictionary, [],
                        word_tokenizer(task.source_dictionary.symbols))
    export_onnx(model.eval(), info, tmp_path / "rating.onnx", head="rating")
    classifier = OMoEClassifier(tmp_path / "rating.onnx")
    texts = sentences(4, seed=2)
    predictions = classifier.predict(texts)
    assert all(p.label is None and p.probabilities is None for p in predictions)
    with torch.no_grad():
        for text, prediction in zip(texts, predictions):
            tokens = torch.tensor([classifier.encode(text)[0]])
            expected = ExportedClassifier(model, "rating")(tokens)[0][0, 0]
            assert prediction.to_json() == {"value": pytest.approx(float(expected), abs=1e-5)}


@pytest.mark.parametrize("tokenizer", [[], ["--train-spm", "300"]], ids=["wordpiece", "spm"])
def test_serving_tokenises_exactly_as_the_binarised_data(tmp_path, tokenizer):
    """omoe-prepare-data's saved tokenizer, embedded by the exporter, gives the model ids of
    the binarised split, token for token (WordPiece and sentencepiece)."""
    from fairseq.data import Dictionary, data_utils
    from fairseq.tasks.sentence_prediction import SentencePredictionConfig, SentencePredictionTask

    from omoe_plugin.data.cli import cli_main
    from omoe_plugin.data.subword import saved_in
    from omoe_plugin.data.tables import Columns, read_examples, split_deterministically
    from tests.data.test_prepare import reviews_tsv

    rows = reviews_tsv(tmp_path / "reviews.tsv")
    cli_main([str(tmp_path / "bin"), "--input", str(rows), *tokenizer])
    words = Dictionary.load(str(tmp_path / "bin" / "input0" / "dict.txt"))
    labels = Dictionary.load(str(tmp_path / "bin" / "label" / "dict.txt"))
    task = SentencePredictionTask(SentencePredictionConfig(num_classes=2), words, labels)
    model = tiny_model(task, max_positions=128)
    info = serving_info(model.cfg, words, ["neg", "pos"], saved_in(tmp_path / "bin"))
    export_onnx(model, info, tmp_path / "model.onnx")
    classifier = OMoEClassifier(tmp_path / "model.onnx", threads=1)
    test = split_deterministically(read_examples(rows, Columns()))["test"]
    binarised = data_utils.load_indexed_dataset(str(tmp_path / "bin" / "input0" / "test"), words)
    served = classifier.encode_batch([e.text for e in test])
    assert [ids[1:] for ids, _ in served] == [binarised[i].tolist() for i in range(len(test))]
    assert any(words.unk() in ids for ids, _ in served) == (not tokenizer)  # unseen words
