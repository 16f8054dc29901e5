"""End to end on real Disfl-QA questions: omoe-prepare-data --corpus disflqa, fairseq-train
--task omoe_span_qa --optimizer omoe (exact match and F1 on validation, in TensorBoard, exact
resume), fairseq-validate on the test split, omoe-export, and OMoEReader / omoe-infer reading
the windows and answers the checkpoint reads."""

import json
import re

import pytest
import torch
from fairseq.data import Dictionary, data_utils

from omoe_plugin.spans import best_span
from tests.cli import (assert_same_model, checkpoint, output, run, scalar_tags,
                       straight_and_resumed, token_task_args)

pytestmark = pytest.mark.slow

TASK, TRAIN = token_task_args("omoe_span_qa", "f1", seed=3)


@pytest.fixture(scope="module")
def runs(disflqa, tmp_path_factory):
    return straight_and_resumed(disflqa, tmp_path_factory, TRAIN, 12)


def test_training_validates_exact_match_and_f1_and_logs_omoe(runs):
    straight, _, logs = runs
    out = output(logs["straight"])
    f1 = [float(v) for v in re.findall(r"\| f1 ([\d.]+)", out)]
    em = [float(v) for v in re.findall(r"\| exact_match ([\d.]+)", out)]
    best = checkpoint(straight, "checkpoint_best.pt")["extra_state"]["best"]
    assert len(f1) == len(em) >= 2 and best == max(f1)  # checkpoints selected by F1
    assert all(e <= f for e, f in zip(em, f1))  # an exact match is an F1 of 100
    assert "loaded valid: 190 windows of 80 questions" in out
    assert re.search(r"omoe_phase=0\.[1-9]", out)  # orthogonal updates ran
    tags = scalar_tags(straight)
    for tag in ("valid/f1", "valid/exact_match", "valid/omoe_sim_cos", "train_inner/omoe_phase",
                "train_inner/omoe_removed", "train_inner/moe_lb"):
        assert tag in tags, tag


def test_resume_continues_exactly(runs):
    straight, split, logs = runs
    assert "@ 6 updates" in output(logs["resumed"])
    assert any("answer_span" in k for k in assert_same_model(straight, split))


def test_validate_scores_the_test_split(disflqa, runs):
    """fairseq-validate gives the score training kept with checkpoint_best on validation, and
    the same scores on test whatever the batch size (a question's windows in several batches)."""
    best = runs[0] / "checkpoints" / "checkpoint_best.pt"

    def scores(split: str, batch_size: int) -> tuple[float, float]:
        result = run("fairseq-validate", str(disflqa), *TASK, "--valid-subset", split,
                     "--batch-size", str(batch_size), "--path", str(best))
        em, f1 = re.findall(r"\| exact_match ([\d.]+) \| f1 ([\d.]+)", output(result))[-1]
        return float(em), float(f1)

    kept = checkpoint(runs[0], "checkpoint_best.pt")["extra_state"]["best"]
    assert scores("valid", 32)[1] == kept
    assert scores("test", 32) == scores("test", 3)


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "qa.onnx"
    result = run("omoe-export", str(runs[0] / "checkpoints" / "checkpoint_best.pt"),
                 "--out", str(out))
    assert "fp32 parity with PyTorch" in output(result) and "['start', 'end']" in output(result)
    return out


def test_served_windows_and_answers_are_the_checkpoints(disflqa, runs, exported):
    from omoe_plugin.export import OMoEClassifier, OMoEReader, OMoETagger, load_model
    from omoe_plugin.export.classifier import ExportedClassifier, load_classifier

    reader = OMoEReader(exported, threads=1)
    with pytest.raises(ValueError, match="not a sentence-classification model: serve it with "
                                         "omoe_plugin.export.OMoEReader"):
        OMoEClassifier(exported)
    with pytest.raises(ValueError, match="not a token-tagging model: serve it with "
                                         "omoe_plugin.export.OMoEReader"):
        OMoETagger(exported)
    assert isinstance(load_model(exported), OMoEReader)
    assert reader.info.span_qa and reader.info.pairs and reader.info.max_answer_tokens == 30
    questions = [json.loads(line) for line in
                 (disflqa / "raw" / "test.questions.jsonl").read_text().splitlines()]
    words = Dictionary.load(str(disflqa / "input0" / "dict.txt"))
    binarised = [data_utils.load_indexed_dataset(str(disflqa / c / "test"), words)
                 for c in ("input0", "input1")]
    served = [w for q in questions for w in reader.windows(
        q["question"], reader.tokenizer.tokenize_with_offsets(q["context"])[0])]
    assert [ids for ids, *_ in served] == [
        [words.bos(), *binarised[0][i].tolist(), *binarised[1][i].tolist()]
        for i in range(len(binarised[0]))]  # the test split's windows, id for id

    model, _ = load_classifier(runs[0] / "checkpoints" / "checkpoint_best.pt")
    net = ExportedClassifier(model)
    pairs = [(q["question"], q["context"]) for q in questions[:8]]
    answers = reader.predict(pairs, batch_size=5)
    for (question, context), answer in zip(pairs, answers):
        tokens, offsets = reader.tokenizer.tokenize_with_offsets(context)
        best = []
        for ids, first, offset, length in reader.windows(question, tokens):
            with torch.no_grad():
                logits = net(torch.tensor([ids]))[0][0].numpy()
            score, a, b = best_span(logits[:, 0], logits[:, 1], first, length, 30)
            best.append((score, a - first + offset, b - first + offset))
        _, a, b = max(best)
        assert (answer.start, answer.end) == (offsets[a][0], offsets[b][1])
        assert answer.text == context[answer.start:answer.end] and 0 < answer.score <= 1


def test_omoe_infer_prints_answers_with_offsets(exported, tmp_path):
    context = "The Normans gave their name to Normandy, a region in France."
    lines = tmp_path / "in.txt"
    lines.write_text(f"Where is Normandy?\t{context}\nno tab here\n")
    result = run("omoe-infer", str(exported), str(lines), "--exit-zero")
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert context[first["start"]:first["end"]] == first["answer"] and first["line"] == 1
    assert "expected two texts separated by a tab" in second["error"]
