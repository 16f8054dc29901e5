"""End to end on real CoNLL-2003 sentences: omoe-prepare-data --format conll, fairseq-train
--task omoe_token_classification --optimizer omoe (entity F1 on validation, in TensorBoard,
exact resume), fairseq-validate on the test split as serving scores it."""

import json
import re

import pytest
import torch

from tests.cli import (assert_same_model, checkpoint, output, run, scalar_tags,
                       straight_and_resumed, token_task_args)

pytestmark = pytest.mark.slow

TASK, TRAIN = token_task_args("omoe_token_classification", "entity_f1", seed=2)


@pytest.fixture(scope="module")
def runs(conll, tmp_path_factory):
    return straight_and_resumed(conll / "data", tmp_path_factory, TRAIN, 12)


def test_training_validates_entity_f1_and_logs_omoe(runs):
    straight, _, logs = runs
    out = output(logs["straight"])
    f1 = [float(v) for v in re.findall(r"\| entity_f1 ([\d.]+)", out)]
    best = checkpoint(straight, "checkpoint_best.pt")["extra_state"]["best"]
    assert len(f1) >= 2 and best == max(f1)  # validated every 6 updates, the best one kept
    assert re.search(r"omoe_phase=0\.[1-9]", out)  # orthogonal updates ran
    tags = scalar_tags(straight)
    for tag in ("valid/entity_f1", "valid/entity_precision", "valid/omoe_sim_cos",
                "train_inner/omoe_phase", "train_inner/moe_lb"):
        assert tag in tags


def test_resume_continues_exactly(runs):
    straight, split, logs = runs
    assert "@ 6 updates" in output(logs["resumed"])
    assert any("token_tags" in k for k in assert_same_model(straight, split))


def test_validate_scores_the_test_split_as_serving_does(conll, runs, exported):
    """fairseq-validate's test entity F1 is seqeval's F1 of the served tagger's tags for the
    test file's words against its gold tags."""
    from seqeval.metrics import f1_score

    from omoe_plugin.export import OMoETagger

    result = run("fairseq-validate", str(conll / "data"), *TASK, "--valid-subset", "test",
                 "--batch-size", "32",
                 "--path", str(runs[0] / "checkpoints" / "checkpoint_best.pt"))
    printed = float(re.findall(r"\| entity_f1 ([\d.]+)", output(result))[-1])
    sentences = [[line.split() for line in block.splitlines()]
                 for block in (conll / "test.txt").read_text().strip().split("\n\n")
                 if not block.startswith("-DOCSTART-")]
    tagged = OMoETagger(exported).predict([[w[0] for w in s] for s in sentences])
    served = [[tag for _, tag in t.words] for t in tagged]
    gold = [[w[-1] for w in s] for s in sentences]
    assert printed == pytest.approx(100 * f1_score(gold, served), abs=0.01)


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "ner.onnx"
    result = run("omoe-export", str(runs[0] / "checkpoints" / "checkpoint_best.pt"),
                 "--out", str(out))
    assert "fp32 parity with PyTorch" in output(result)
    return out


def test_served_word_tags_are_the_checkpoints(runs, exported):
    from omoe_plugin.export.classifier import load_classifier
    from omoe_plugin.export import OMoETagger

    model, info = load_classifier(runs[0] / "checkpoints" / "checkpoint_best.pt")
    assert info.tagging and info.labels == ["B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC",
                                            "I-MISC", "I-ORG", "I-PER", "O"]
    tagger = OMoETagger(exported)
    text = "Peter Blackburn, of the European Commission, flew to Brussels on 1996-08-22."
    [tagged] = tagger.predict([text])
    words = [w for w, _ in tagged.words]
    assert words[:3] == ["Peter", "Blackburn", ","] and "1996-08-22" in words
    [(ids, firsts)] = tagger._pieces([(w, 0, 0) for w in words])
    with torch.no_grad():
        logits = model(torch.tensor([ids]), classification_head_name="token_tags")[0][0]
    assert [t for _, t in tagged.words] == [info.labels[i] for i in logits[firsts].argmax(-1)]
    # words already split are tagged exactly as given; a bad item costs only itself
    given = ["@LH_TCC", "flew", "to", "https://example.com/a-b", "Brussels"]
    split, failed = tagger.predict([given, ["two words"]])
    assert [w for w, _ in split.words] == given and "holds white space" in failed.error
    for entity in split.entities:
        assert " ".join(given)[entity.start:entity.end] == entity.text
    for entity in tagged.entities:
        assert text[entity.start:entity.end] == entity.text


def test_omoe_infer_prints_entities(exported, tmp_path):
    lines = tmp_path / "in.txt"
    from omoe_plugin.export import OMoETagger

    text = "Peter Blackburn flew to Brussels."
    lines.write_text(f"{text}\n\n")
    result = run("omoe-infer", str(exported), str(lines), check=False)
    records = [json.loads(line) for line in result.stdout.splitlines()]
    [tagged] = OMoETagger(exported).predict([text])
    assert records[0] == {"line": 1, **tagged.to_json()}
    assert records[1] == {"line": 2, "error": "empty line"}
    assert result.returncode == 1  # a line failed, as line-oriented tools say
