"""Import a fairseq RoBERTa checkpoint (`model.pt` with its `dict.txt`, e.g. roberta.base) as
the dense `omoe_roberta` encoder.

The checkpoint is read with `torch.load(weights_only=True)`; the one extra global allowed is
`argparse.Namespace`, a plain container in which fairseq stores the training options of older
checkpoints (never code). `encoder.sentence_encoder.*` maps onto our encoder one to one (the
layers share fairseq's names); the masked-LM head is dropped. fairseq's learned positions
start at padding_idx + 1 (position 0 of a sentence is row 2), so the rows from there on are
kept. RoBERTa has no segments: the segment embedding stays zero.
"""

import argparse
from pathlib import Path

import torch
from fairseq.data import Dictionary

from ..models import OMoERobertaConfig
from .bert import CheckpointError
from .safe_read import read_checkpoint

PREFIX = "encoder.sentence_encoder."


def read_roberta(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(training options, model tensors) of a fairseq RoBERTa checkpoint."""
    state = read_checkpoint(path, allowed=(argparse.Namespace,))
    args = state.get("args")
    cfg = state.get("cfg")
    if isinstance(args, argparse.Namespace):
        options = vars(args)
    elif isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        options = cfg["model"]
    else:
        raise CheckpointError(f"{path} has neither fairseq's args nor cfg.model: not a fairseq "
                              "checkpoint")
    model = state.get("model")
    if not isinstance(model, dict) or f"{PREFIX}embed_tokens.weight" not in model:
        raise CheckpointError(f"{path} has no {PREFIX}embed_tokens.weight: not a fairseq RoBERTa "
                              "checkpoint")
    return options, model


def model_config(options: dict, max_positions: int) -> OMoERobertaConfig:
    """The dense omoe_roberta configuration with the checkpoint's shapes."""
    if options.get("encoder_normalize_before"):
        raise CheckpointError("the checkpoint is a pre-LN encoder (encoder_normalize_before); "
                              "omoe_roberta is post-LN, as RoBERTa is")
    if options.get("activation_fn", "gelu") not in ("gelu", "relu"):
        raise CheckpointError(f"unsupported activation {options.get('activation_fn')!r}")
    trained = options.get("max_positions") or options.get("tokens_per_sample")
    if trained and max_positions > trained:
        raise CheckpointError(f"--max-positions {max_positions} exceeds the checkpoint's "
                              f"{trained} positions")
    return OMoERobertaConfig(
        encoder_layers=options["encoder_layers"],
        encoder_embed_dim=options["encoder_embed_dim"],
        encoder_ffn_embed_dim=options["encoder_ffn_embed_dim"],
        encoder_attention_heads=options["encoder_attention_heads"],
        activation_fn=options.get("activation_fn", "gelu"),
        dropout=options.get("dropout", 0.1),
        attention_dropout=options.get("attention_dropout", 0.1),
        activation_dropout=options.get("activation_dropout", 0.0),
        layer_norm_eps=1e-5,  # fairseq's LayerNorm
        moe_freq=0,
        max_positions=max_positions,
    )


def convert_state(cfg: OMoERobertaConfig, tensors: dict[str, torch.Tensor],
                  dictionary: Dictionary) -> dict[str, torch.Tensor]:
    """The dense omoe_roberta state dict (encoder only) of RoBERTa tensors; dictionary: the
    checkpoint's dict.txt (sentence_prediction appends <mask> when it loads it)."""
    def take(name: str) -> torch.Tensor:
        if PREFIX + name not in tensors:
            raise CheckpointError(f"the checkpoint lacks {PREFIX}{name}")
        return tensors[PREFIX + name].float()

    tokens = take("embed_tokens.weight")
    if tokens.size(0) != len(dictionary) + 1:
        raise CheckpointError(f"the checkpoint embeds {tokens.size(0)} symbols, the dictionary "
                              f"has {len(dictionary)} (+ <mask>): pass the dict.txt it was "
                              "trained with")
    first = dictionary.pad() + 1  # fairseq's learned positions skip 0..padding_idx
    positions = take("embed_positions.weight")[first:first + cfg.max_positions]
    norm = "layernorm_embedding" if PREFIX + "layernorm_embedding.weight" in tensors \
        else "emb_layer_norm"  # the name in checkpoints of older fairseq
    state = {
        "encoder.embed_tokens.weight": tokens,
        "encoder.embed_positions.weight": positions,
        "encoder.embed_segments.weight": torch.zeros(2, cfg.encoder_embed_dim),
        "encoder.layernorm_embedding.weight": take(f"{norm}.weight"),
        "encoder.layernorm_embedding.bias": take(f"{norm}.bias"),
    }
    names = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
             "self_attn_layer_norm", "fc1", "fc2", "final_layer_norm")
    for i in range(cfg.encoder_layers):
        layer = f"layers.{i}."
        if PREFIX + layer + "self_attn.in_proj_weight" in tensors:  # older fairseq: q, k, v joined
            for part in ("weight", "bias"):
                for name, value in zip("qkv", take(f"{layer}self_attn.in_proj_{part}").chunk(3)):
                    state[f"encoder.{layer}self_attn.{name}_proj.{part}"] = value
        for name in names:
            for part in ("weight", "bias"):
                key = f"encoder.{layer}{name}.{part}"
                if key not in state:  # not split from in_proj above
                    state[key] = take(f"{layer}{name}.{part}")
    return state
