"""omoe-import-roberta: a RoBERTa built and saved by fairseq itself (small, random: no hub)
reads safely, and the imported encoder gives fairseq's own features."""

import argparse
import os

import pytest
import torch
from fairseq import options, tasks

from omoe_plugin.convert.checkpoint import load_encoder_checkpoint
from omoe_plugin.convert.cli import import_roberta_main
from omoe_plugin.models import OMoERobertaModel
from tests.conftest import dictionaries


@pytest.fixture(scope="module")
def roberta(tmp_path_factory):
    """fairseq's `roberta` arch (2 layers, dim 32) on the conftest vocabulary, saved as the
    published RoBERTa checkpoints are: {"args": Namespace, "model": state}."""
    out = tmp_path_factory.mktemp("roberta")
    words, _ = dictionaries()
    words.save(str(out / "dict.txt"))
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        str(out), "--task", "masked_lm", "--arch", "roberta", "--encoder-layers", "2",
        "--encoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64",
        "--encoder-attention-heads", "4", "--tokens-per-sample", "64", "--cpu"])
    task = tasks.setup_task(args)
    torch.manual_seed(0)
    model = task.build_model(args).eval()
    plain = argparse.Namespace(**{k: v for k, v in vars(args).items()
                                  if v is None or type(v) in (bool, int, float, str, list)})
    torch.save({"args": plain, "model": model.state_dict()}, out / "model.pt")
    return out, model, task


def test_imported_encoder_gives_fairseqs_roberta_features(roberta, tmp_path):
    out, model, task = roberta
    import_roberta_main([str(out / "model.pt"), "--dict", str(out / "dict.txt"), "--out",
                         str(tmp_path), "--max-positions", "64"])
    cfg, state = load_encoder_checkpoint(tmp_path / "model.pt")
    ours = OMoERobertaModel.build_model(cfg, task).eval()
    ours.load_state_dict(state, strict=False)
    assert not set(k for k in ours.state_dict() if k.startswith("encoder.")) - set(state)
    pad = task.source_dictionary.pad()
    rows = torch.randint(4, 40, (3, 20))
    rows[:, 0], rows[:, -1] = 0, 2
    rows[1, 12:], rows[1, 11] = pad, 2  # a shorter sentence, right-padded
    with torch.no_grad():
        expected, _ = model(rows, features_only=True)
        features, _ = ours.encoder(rows)
    real = rows.ne(pad)
    torch.testing.assert_close(features[real], expected[real], atol=1e-5, rtol=0)


def test_code_another_model_a_wrong_dictionary_or_too_many_positions_stop(roberta, tmp_path):
    out, model, _ = roberta
    evil = tmp_path / "evil.pt"
    torch.save({"args": os.system, "model": model.state_dict()}, evil)
    with pytest.raises(SystemExit, match="refers to posix.system"):
        import_roberta_main([str(evil), "--dict", str(out / "dict.txt"), "--out", str(tmp_path)])
    foreign = tmp_path / "foreign.pt"
    torch.save({"args": argparse.Namespace(), "model": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(SystemExit, match="exceeds the checkpoint's 64 positions"):
        import_roberta_main([str(out / "model.pt"), "--dict", str(out / "dict.txt"), "--out",
                             str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="not a fairseq RoBERTa checkpoint"):
        import_roberta_main([str(foreign), "--dict", str(out / "dict.txt"), "--out",
                             str(tmp_path)])
    other_dict = tmp_path / "dict.txt"
    other_dict.write_text("".join(f"x{i} 1\n" for i in range(7)))
    with pytest.raises(SystemExit, match="pass the dict.txt it was trained with"):
        import_roberta_main([str(out / "model.pt"), "--dict", str(other_dict), "--out",
                             str(tmp_path / "o"), "--max-positions", "64"])
    assert not (tmp_path / "o").exists()
