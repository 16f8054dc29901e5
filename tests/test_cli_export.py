"""End to end: fine-tune a tiny MoE on the real movie reviews with fairseq-train, export it
with omoe-export (fp32 and int8), classify sentences from a file with omoe-infer, and compare
with PyTorch: same tokens as fairseq's binarised data, same labels, same experts."""

import json

import numpy as np
import pytest
import torch
from fairseq.data import data_utils
from fairseq.tasks.sentence_prediction import SentencePredictionTask

from omoe_plugin.export import inference, onnx_export
from omoe_plugin.export.runtime import session
from omoe_plugin.export.sentences import OMoEClassifier
from omoe_plugin.export.classifier import ExportedClassifier, load_classifier
from tests.cli import exits_with, output, run, train
from tests.test_cli_omoe import OMOE

pytestmark = pytest.mark.slow

SENTENCES = 64


@pytest.fixture(scope="module")
def exported(movie_reviews, tmp_path_factory):
    data, _ = movie_reviews
    out = tmp_path_factory.mktemp("export")
    train(data, out / "run", OMOE, 12)
    ckpt = out / "run" / "checkpoints" / "checkpoint_last.pt"
    logs = {name: output(run("omoe-export", str(ckpt), "--out", str(out / f"{name}.onnx"), *extra))
            for name, extra in (("fp32", ()), ("int8", ("--int8",)))}
    texts = (data / "raw" / "test.text").read_text(encoding="utf-8").splitlines()[:SENTENCES]
    (out / "test.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    return data, out, ckpt, logs, texts


def test_export_checks_parity_and_writes_a_self_contained_model(exported):
    _, out, _, logs, _ = exported
    assert "fp32 parity with PyTorch: 1x1" in logs["fp32"] and "32x128 padded" in logs["fp32"]
    assert "wrote" in logs["fp32"] and "['neg', 'pos']" in logs["fp32"]
    assert "int8 agreement with PyTorch" in logs["int8"]
    assert (out / "int8.onnx").stat().st_size < (out / "fp32.onnx").stat().st_size / 2
    assert not list(out.glob("*.onnx.data"))


def test_serving_tokenises_exactly_as_the_binarised_training_data(exported):
    data, out, _, _, texts = exported
    classifier = OMoEClassifier(out / "fp32.onnx")
    dictionary = SentencePredictionTask.load_dictionary(str(data / "input0" / "dict.txt"))
    dataset = data_utils.load_indexed_dataset(str(data / "input0" / "test"), dictionary)
    for i, text in enumerate(texts):
        ids, _ = classifier.encode(text)
        assert ids == [classifier.info.bos, *dataset[i].tolist()]


def test_infer_labels_and_experts_match_pytorch_on_real_sentences(exported):
    data, out, ckpt, _, texts = exported
    result = run("omoe-infer", str(out / "fp32.onnx"), str(out / "test.txt"), "--batch-size", "8")
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["line"] for r in records] == list(range(1, SENTENCES + 1))

    model, info = load_classifier(ckpt)
    classifier = OMoEClassifier(out / "fp32.onnx")
    tokens = data_utils.collate_tokens(
        [torch.tensor(classifier.encode(t)[0]) for t in texts], info.pad)
    with torch.no_grad():
        logits, experts = ExportedClassifier(model)(tokens)
    assert [r["label"] for r in records] == [info.labels[i] for i in logits.argmax(-1)]
    probs = np.array([[r["probabilities"][label] for label in info.labels] for r in records])
    np.testing.assert_allclose(probs, torch.softmax(logits, -1).numpy(), atol=1e-5)
    onnx_experts = session(out / "fp32.onnx").run(["experts"], {"src_tokens": tokens.numpy()})[0]
    real = (tokens != info.pad).numpy()
    assert (onnx_experts == experts.numpy())[real].all()


def test_int8_labels_mostly_agree_with_fp32(exported):
    _, out, _, _, texts = exported
    fp32, int8 = (OMoEClassifier(out / f"{name}.onnx").predict(texts) for name in ("fp32", "int8"))
    agree = np.mean([a.label == b.label for a, b in zip(fp32, int8)])
    assert agree >= 0.9


def test_bad_checkpoints_and_options_get_clear_messages(exported, tmp_path):
    _, out, ckpt, _, _ = exported
    state = torch.load(ckpt, weights_only=True)
    foreign = {"cfg": {"model": {"_name": "transformer"}}, "model": {}}
    headless = {**state, "model": {k: v for k, v in state["model"].items()
                                   if not k.startswith("classification_heads.")}}
    for name, content in (("foreign.pt", foreign), ("headless.pt", headless)):
        torch.save(content, tmp_path / name)
    (tmp_path / "truncated.pt").write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    cases = {
        "foreign.pt": "is not an omoe_roberta checkpoint",
        "headless.pt": "has no classification head",
        "truncated.pt": "not a readable torch checkpoint",
        "missing.pt": "no checkpoint at",
    }
    for name, message in cases.items():
        argv = [str(tmp_path / name), "--out", str(tmp_path / "x.onnx")]
        assert message in exits_with(onnx_export.cli_main, argv), name
    argv = [str(ckpt), "--out", str(tmp_path / "x.onnx"), "--data", str(tmp_path)]
    assert "pass --data" in exits_with(onnx_export.cli_main, argv)
    assert not (tmp_path / "x.onnx").exists()
    assert "not a loadable ONNX model" in exits_with(inference.cli_main, [str(ckpt)])
    # and from the console script, on stderr with a failing exit status
    missing = run("omoe-export", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.onnx"),
                  check=False)
    assert missing.returncode != 0 and "omoe-export: no checkpoint at" in missing.stderr
