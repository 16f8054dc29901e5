"""Import a BERT-family Hugging Face checkpoint directory (config.json, model.safetensors,
vocab.txt) as a fairseq checkpoint of the dense `omoe_roberta` encoder plus the fairseq
dictionary of its WordPiece vocabulary.

Vocabulary: fairseq's four special symbols take BERT's [CLS] (<s>, what `--init-token 0`
prepends), [PAD] (<pad>), [SEP] (</s>, what fairseq-preprocess appends) and [UNK] (<unk>);
the other WordPiece tokens follow in BERT's order; the <mask> that sentence_prediction adds
on load takes [MASK]. Embedding rows are reordered to match, so a sentence binarised with
this dictionary (`omoe-prepare-data --vocab-dict`) reads exactly as BERT reads
"[CLS] tokens [SEP]".

BERT's token-type embedding 0 is folded into the position embeddings and type 1 becomes
the encoder's segment-1 embedding (its difference from type 0), so single sentences and
pairs (`[CLS] A [SEP] B [SEP]`, segments derived from the first [SEP]) read as in BERT. The
pooler is not imported (fairseq's classification head is new).
"""

import json
from pathlib import Path

import torch
from fairseq.data import Dictionary
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..models import OMoERobertaConfig

REQUIRED_FILES = ("config.json", "model.safetensors", "vocab.txt")
SPECIALS = (("<s>", "[CLS]"), ("<pad>", "[PAD]"), ("</s>", "[SEP]"), ("<unk>", "[UNK]"))
MASK = "[MASK]"
SUPPORTED_TYPES = ("bert",)


class CheckpointError(ValueError):
    """The directory is not a usable BERT-family checkpoint; the message says why."""


def read_bert_dir(path: Path) -> tuple[dict, dict[str, torch.Tensor], list[str]]:
    """(config, tensors without a "bert." prefix, vocabulary) of a checkpoint directory."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory (expected a Hugging Face checkpoint)")
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}: not a BERT-family checkpoint")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path / 'config.json'} is not valid JSON: {e}") from None
    if config.get("model_type") not in SUPPORTED_TYPES:
        raise CheckpointError(
            f"{path} holds a {config.get('model_type')!r} model; supported: {SUPPORTED_TYPES}"
        )
    try:
        tensors = load_file(str(path / "model.safetensors"))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path / 'model.safetensors'} cannot be read: {e}") from None
    tensors = {k.removeprefix("bert."): v for k, v in tensors.items()}
    vocab = (path / "vocab.txt").read_text(encoding="utf-8").splitlines()
    if len(vocab) != config.get("vocab_size"):
        raise CheckpointError(
            f"vocabulary mismatch: vocab.txt has {len(vocab)} tokens, config.json says "
            f"vocab_size={config.get('vocab_size')}"
        )
    absent = [t for _, t in SPECIALS if t not in vocab] + ([MASK] if MASK not in vocab else [])
    if absent:
        raise CheckpointError(f"vocab.txt lacks the special tokens {absent}")
    return config, tensors, vocab


def fairseq_dictionary(vocab: list[str]) -> tuple[Dictionary, list[int]]:
    """The fairseq dictionary of a BERT vocabulary, and for every fairseq id (the <mask>
    sentence_prediction appends included) the BERT embedding row it takes."""
    dictionary = Dictionary()  # <s>, <pad>, </s>, <unk> at ids 0..3
    specials = {bert for _, bert in SPECIALS}
    rows = [vocab.index(bert) for _, bert in SPECIALS]
    for row, token in enumerate(vocab):
        if token not in specials:
            dictionary.add_symbol(token, n=1)
            rows.append(row)
    if len(dictionary) != len(vocab):
        raise CheckpointError("vocab.txt has duplicate tokens")
    return dictionary, rows + [vocab.index(MASK)]


def model_config(config: dict, max_positions: int) -> OMoERobertaConfig:
    """The dense omoe_roberta configuration with the checkpoint's shapes."""
    if config.get("hidden_act") not in ("gelu", "relu"):
        raise CheckpointError(f"unsupported activation {config.get('hidden_act')!r}")
    if max_positions > config["max_position_embeddings"]:
        raise CheckpointError(
            f"--max-positions {max_positions} exceeds the checkpoint's "
            f"{config['max_position_embeddings']} position embeddings"
        )
    return OMoERobertaConfig(
        encoder_layers=config["num_hidden_layers"],
        encoder_embed_dim=config["hidden_size"],
        encoder_ffn_embed_dim=config["intermediate_size"],
        encoder_attention_heads=config["num_attention_heads"],
        activation_fn=config["hidden_act"],
        dropout=config.get("hidden_dropout_prob", 0.1),
        attention_dropout=config.get("attention_probs_dropout_prob", 0.1),
        layer_norm_eps=config.get("layer_norm_eps", 1e-12),
        moe_freq=0,
        max_positions=max_positions,
    )


def convert_state(
    cfg: OMoERobertaConfig, tensors: dict[str, torch.Tensor], rows: list[int]
) -> dict[str, torch.Tensor]:
    """The dense omoe_roberta state dict (encoder only) of BERT tensors."""
    def take(name: str) -> torch.Tensor:
        if name not in tensors:
            raise CheckpointError(f"model.safetensors lacks {name}")
        return tensors[name].float()

    emb = "embeddings."
    positions = take(emb + "position_embeddings.weight")[: cfg.max_positions]
    types = take(emb + "token_type_embeddings.weight")  # [type_vocab_size, dim]
    state = {
        "encoder.embed_tokens.weight": take(emb + "word_embeddings.weight")[rows],
        "encoder.embed_positions.weight": positions + types[0],
        "encoder.embed_segments.weight": torch.stack([torch.zeros_like(types[0]),
                                                      types[min(1, len(types) - 1)] - types[0]]),
        "encoder.layernorm_embedding.weight": take(emb + "LayerNorm.weight"),
        "encoder.layernorm_embedding.bias": take(emb + "LayerNorm.bias"),
    }
    names = {
        "self_attn.q_proj": "attention.self.query",
        "self_attn.k_proj": "attention.self.key",
        "self_attn.v_proj": "attention.self.value",
        "self_attn.out_proj": "attention.output.dense",
        "self_attn_layer_norm": "attention.output.LayerNorm",
        "fc1": "intermediate.dense",
        "fc2": "output.dense",
        "final_layer_norm": "output.LayerNorm",
    }
    for i in range(cfg.encoder_layers):
        for ours, theirs in names.items():
            for part in ("weight", "bias"):
                state[f"encoder.layers.{i}.{ours}.{part}"] = take(f"encoder.layer.{i}.{theirs}.{part}")
    return state
