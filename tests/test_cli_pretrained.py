"""End to end from the real pretrained encoder: omoe-import-bert --minilm, omoe-upcycle (copy
and split), omoe-prepare-data --srcdict, fairseq-train --finetune-from-model with OMoE,
omoe-analyze."""

import json
import subprocess

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from omoe_plugin.analysis import analyze
from omoe_plugin.convert import cli as convert_cli
from omoe_plugin.convert.checkpoint import load_encoder_checkpoint
from omoe_plugin.data.prepare import binarize
from tests.cli import BIN, USER_DIR, checkpoint, exits_with, output, run, train

pytestmark = pytest.mark.slow

FINETUNE = [
    "--user-dir", USER_DIR, "--task", "omoe_sentence_prediction", "--num-classes", "2",
    "--init-token", "0", "--max-positions", "128", "--cpu", "--num-workers", "0",
    "--arch", "omoe_roberta_minilm", "--layer-norm-eps", "1e-12", "--moe-experts", "4",
    "--criterion", "omoe_sentence_prediction", "--optimizer", "omoe", "--lr", "1e-4",
    "--omoe-accumulate-steps", "1", "--omoe-orthogonal-steps", "2", "--batch-size", "16",
    "--disable-validation", "--log-format", "simple", "--log-interval", "1",
]


@pytest.fixture(scope="module")
def pretrained(movie_reviews, tmp_path_factory):
    """The imported and upcycled MiniLM, and the movie reviews binarised with its vocabulary."""
    out = tmp_path_factory.mktemp("pretrained")
    run("omoe-import-bert", "--minilm", "--out", str(out), "--max-positions", "128")
    run("omoe-upcycle", str(out / "model.pt"), "--out", str(out / "moe.pt"), "--moe-experts", "4")
    data = out / "data"
    binarize(movie_reviews[0] / "raw", data, workers=2, srcdict=out / "dict.txt")
    return out, data


def test_finetune_the_upcycled_encoder_and_analyse_it(pretrained):
    out, data = pretrained
    result = train(data, out / "run", [*FINETUNE, "--finetune-from-model", str(out / "moe.pt")], 3)
    log = output(result)
    assert "Loaded checkpoint" in log and "initialising classification_heads" in log
    assert "num_updates=3" in log and "omoe_removed=" in log
    analysis = run("omoe-analyze", str(out / "run" / "checkpoints" / "checkpoint_last.pt"),
                   "--data", str(data), "--tokens", "256", "--out", str(out / "analysis"),
                   "--tensorboard-logdir", str(out / "tb"), "--start", str(out / "moe.pt"))
    assert "| mean |" in analysis.stdout and "displacements pointed apart |" in analysis.stdout
    layers = json.loads((out / "analysis" / "similarity.json").read_text())
    assert [r["layer"] for r in layers] == list(range(6))
    # three updates from identical experts: still nearly homogeneous (CKA may round to 1),
    # but the outputs are no longer identical; pointed apart, the same displacements would
    # make them less alike than they are
    assert all(0.9 < r["mean_cka"] <= 1.0 + 1e-6 for r in layers)
    assert all(r["mean_apart"] < r["mean_cos"] < 1.0 for r in layers)
    assert all(-1.0 <= r["mean_delta"] <= 1.0 for r in layers)
    assert (out / "analysis" / "similarity.png").stat().st_size > 10_000
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    assert "expert_similarity" in events.Tags()["images"]


def test_split_upcycle_then_finetune_with_its_expert_size(pretrained, tmp_path):
    out, data = pretrained
    split = run("omoe-upcycle", str(out / "model.pt"), "--out", str(out / "split.pt"),
                "--method", "split", "--importance-data", str(data), "--importance-tokens", "2000")
    assert "fine-tune with --moe-expert-ffn-dim 576" in output(split)  # 256 + (1536 - 256) / 4
    cfg, state = load_encoder_checkpoint(out / "split.pt")
    assert cfg.moe_expert_ffn_dim == 576
    assert state["encoder.layers.5.moe.experts.fc2_weight"].shape == (4, 384, 576)
    args = [*FINETUNE, "--finetune-from-model", str(out / "split.pt")]
    forgot = run("fairseq-train", str(data), *args, "--save-dir", str(tmp_path), check=False)
    assert forgot.returncode != 0 and forgot.stderr.strip().splitlines()[-1] == (
        "cannot load the checkpoint: encoder.layers.0.moe.experts.fc1_weight is [4, 576, 384] "
        "in the checkpoint, [4, 1536, 384] here: pass --moe-expert-ffn-dim 576")
    log = output(train(data, out / "split_run", [*args, "--moe-expert-ffn-dim", "576"], 2))
    assert "Loaded checkpoint" in log and "num_updates=2" in log
    assert checkpoint(out / "split_run")["cfg"]["model"]["moe_expert_ffn_dim"] == 576


def test_the_dense_checkpoint_cannot_be_analysed_and_bad_sources_are_refused(pretrained, tmp_path):
    out, data = pretrained
    argv = [str(out / "model.pt"), "--data", str(data)]
    assert "dense model" in exits_with(analyze.cli_main, argv)
    argv = [str(tmp_path), "--out", str(tmp_path / "x")]
    assert "lacks config.json" in exits_with(convert_cli.import_bert_main, argv)
    missing = run("omoe-upcycle", str(tmp_path / "none.pt"), "--out", str(tmp_path / "y.pt"),
                  check=False)
    assert missing.returncode != 0 and "no checkpoint at" in missing.stderr


def test_your_own_sentence_pairs_end_to_end(pretrained, tmp_path):
    """A TSV of real sentence pairs through omoe-prepare-data, fairseq-train with OMoE from
    the upcycled MiniLM, omoe-export and omoe-infer: serving joins a pair as training did."""
    from fairseq.data import Dictionary, data_utils

    from omoe_plugin.export.sentences import OMoEClassifier
    from tests.data.test_prepare import pair_rows, real_reviews, write_tsv

    out, _ = pretrained
    rows = pair_rows(real_reviews())
    write_tsv(tmp_path / "pairs.tsv", rows)
    data = tmp_path / "data"
    run("omoe-prepare-data", str(data), "--input", str(tmp_path / "pairs.tsv"), "--text-column",
        "first", "--pair-column", "second", "--label-column", "same", "--srcdict",
        str(out / "dict.txt"))
    log = output(train(data, tmp_path / "run", [*FINETUNE, "--finetune-from-model",
                                                str(out / "moe.pt")], 2))
    assert "loaded" in log and "input1" in log and "num_updates=2" in log
    model = tmp_path / "model.onnx"
    export = run("omoe-export", str(tmp_path / "run" / "checkpoints" / "checkpoint_last.pt"),
                 "--out", str(model))
    assert "experts 100.0%" in output(export)
    classifier = OMoEClassifier(model, threads=1)
    assert classifier.info.pairs and classifier.info.separator is None  # BERT: A [SEP] B [SEP]
    words = Dictionary.load(str(data / "input0" / "dict.txt"))
    first, second = (data_utils.load_indexed_dataset(str(data / c / "test"), words)
                     for c in ("input0", "input1"))
    test = (data / "raw" / "test.text").read_text().splitlines()
    pairs = list(zip(test, (data / "raw" / "test.pair").read_text().splitlines()))
    served = classifier.encode_batch(pairs)
    assert [ids for ids, _ in served] == [[words.bos(), *first[i].tolist(), *second[i].tolist()]
                                          for i in range(len(pairs))]
    lines = "".join(f"{a}\t{b}\n" for a, b in pairs[:3]) + "no tab on this line\n"
    infer = subprocess.run([str(BIN / "omoe-infer"), str(model)], input=lines,
                           capture_output=True, text=True)
    records = [json.loads(line) for line in infer.stdout.splitlines()]
    assert [r.get("label") in ("yes", "no") for r in records] == [True, True, True, False]
    assert "expected two texts separated by a tab" in records[3]["error"]
    assert infer.returncode == 1
