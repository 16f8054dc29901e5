"""End to end on real CoNLL-2003 sentences: omoe-prepare-data --format conll, fairseq-train
--task omoe_token_classification --optimizer omoe (entity F1 on validation, in TensorBoard,
exact resume), fairseq-validate on the test split; a malformed CoNLL line stops
omoe-prepare-data with its file and line."""

import re

import pytest
import torch

from omoe_plugin.data.cli import cli_main as prepare_main
from omoe_plugin.data.sources import conll2003_texts
from tests.cli import USER_DIR, checkpoint, output, run, scalar_tags, straight_and_resumed

pytestmark = pytest.mark.slow

TASK = ["--user-dir", USER_DIR, "--task", "omoe_token_classification", "--max-positions", "128",
        "--criterion", "omoe_token_classification", "--cpu", "--num-workers", "0"]
TRAIN = TASK + [
    "--arch", "omoe_roberta_tiny", "--moe-experts", "4", "--moe-top-k", "1",
    "--optimizer", "omoe", "--lr", "1e-3", "--omoe-accumulate-steps", "3",
    "--omoe-orthogonal-steps", "3", "--batch-size", "16", "--seed", "2",
    "--best-checkpoint-metric", "entity_f1", "--maximize-best-checkpoint-metric",
    "--log-format", "simple", "--log-interval", "5", "--no-epoch-checkpoints",
    "--validate-interval-updates", "10",
]


def conll_head(text: str, sentences: int) -> str:
    """The first `sentences` sentences of a CoNLL file's text."""
    return "\n\n".join(text.split("\n\n")[:sentences + 1]) + "\n"


@pytest.fixture(scope="module")
def conll(tmp_path_factory):
    """300 / 60 / 60 real CoNLL-2003 sentences, written as files and prepared by the CLI."""
    root = tmp_path_factory.mktemp("conll")
    args = ["--format", "conll"]
    texts = conll2003_texts()
    for split, n in (("train", 300), ("valid", 60), ("test", 60)):
        (root / f"{split}.txt").write_text(conll_head(texts[split], n))
        args += [f"--{split}", str(root / f"{split}.txt")]
    prepare_main([str(root / "data"), *args])
    return root


@pytest.fixture(scope="module")
def runs(conll, tmp_path_factory):
    return straight_and_resumed(conll / "data", tmp_path_factory, TRAIN, 20)


def test_training_validates_entity_f1_and_logs_omoe(runs):
    straight, _, logs = runs
    out = output(logs["straight"])
    f1 = [float(v) for v in re.findall(r"\| entity_f1 ([\d.]+)", out)]
    assert len(f1) >= 2 and all(0 <= v <= 100 for v in f1)  # every 10 updates, each epoch
    assert re.search(r"omoe_phase=0\.[1-9]", out)  # orthogonal updates ran
    tags = scalar_tags(straight)
    for tag in ("valid/entity_f1", "valid/entity_precision", "valid/omoe_sim_cos",
                "train_inner/omoe_phase", "train_inner/moe_lb"):
        assert tag in tags


def test_resume_continues_exactly(runs):
    straight, split, logs = runs
    assert "@ 10 updates" in output(logs["resumed"])
    a, b = checkpoint(straight)["model"], checkpoint(split)["model"]
    assert any("token_tags" in k for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_validate_scores_the_test_split(conll, runs):
    result = run("fairseq-validate", str(conll / "data"), *TASK, "--valid-subset", "test",
                 "--batch-size", "32",
                 "--path", str(runs[0] / "checkpoints" / "checkpoint_best.pt"))
    assert re.search(r"\| entity_f1 [\d.]+", output(result))


def test_a_malformed_line_stops_preparation_with_file_and_line(conll, tmp_path):
    bad = tmp_path / "train.txt"
    bad.write_text("EU NNP B-NP B-ORG\nrejects O\n")
    args = [str(tmp_path / "out"), "--format", "conll", "--train", str(bad),
            "--valid", str(conll / "valid.txt"), "--test", str(conll / "test.txt")]
    with pytest.raises(SystemExit, match=rf"{re.escape(str(bad))}:2: expected 4 columns"):
        prepare_main(args)
    assert not (tmp_path / "out").exists()
