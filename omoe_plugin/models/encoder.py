"""BERT/RoBERTa-style post-LN transformer encoder whose FFN sublayers can be MoE layers.

Written for export as much as for training: tensors are batch-major ([B, T, C]), padding
is always masked (fairseq's encoder branches on `has_pads`, which torch.export cannot
trace), and attention is one scaled_dot_product_attention call (one fused operator in an
exported graph: attention.py).
"""

from typing import Optional

import torch
import torch.nn as nn
from fairseq import utils
from fairseq.models import FairseqEncoder
from fairseq.modules import LayerNorm

from ..moe import MoEArgs, MoEAux, MoELayer
from ..moe.parallel import ExpertParallel
from .attention import SelfAttention


class EncoderLayer(nn.Module):
    """Post-LN block: x = LN(x + Attn(x)); x = LN(x + FFN(x)), FFN dense or MoE."""

    def __init__(self, cfg, moe: Optional[MoEArgs]) -> None:
        super().__init__()
        dim, eps = cfg.encoder_embed_dim, cfg.layer_norm_eps
        self.self_attn = SelfAttention(dim, cfg.encoder_attention_heads, cfg.attention_dropout)
        self.self_attn_layer_norm = LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(cfg.dropout)
        if moe is None:
            self.moe = None
            self.fc1 = nn.Linear(dim, cfg.encoder_ffn_embed_dim)
            self.fc2 = nn.Linear(cfg.encoder_ffn_embed_dim, dim)
            self.activation_fn = utils.get_activation_fn(cfg.activation_fn)
            self.activation_dropout = nn.Dropout(cfg.activation_dropout)
        else:
            self.moe = MoELayer(moe)
        self.final_layer_norm = LayerNorm(dim, eps=eps)

    def forward(
        self, x: torch.Tensor, padding_mask: torch.Tensor, attend: torch.Tensor
    ) -> tuple[torch.Tensor, Optional[MoEAux]]:
        """x: [B, T, C]; padding_mask: [B, T] (True = pad); attend: see SelfAttention."""
        x = self.self_attn_layer_norm(x + self.dropout(self.self_attn(x, attend)))
        if self.moe is None:
            y = self.fc2(self.activation_dropout(self.activation_fn(self.fc1(x))))
            aux = None
        else:
            y, aux = self.moe(x, padding_mask)
        return self.final_layer_norm(x + self.dropout(y)), aux


class OMoEEncoder(FairseqEncoder):
    """Token + learned position + segment embeddings, embedding LayerNorm, then the layer
    stack.

    Segments are derived from the tokens, the same way in training, fairseq-validate and the
    ONNX graph: segment 1 begins after the first </s>, so a pair binarised as
    `<s> A </s> B </s>` (BERT's `[CLS] A [SEP] B [SEP]`) or `<s> A </s> </s> B </s>`
    (RoBERTa's) reads A as segment 0 and B as segment 1; a single sentence is all segment 0.
    Segment 0's embedding is zero, held in the position embeddings (BERT's is folded into
    them on import), so single sentences read exactly as without segments.

    Layer i (0-based) is an MoE layer when moe_freq > 0 and (i + 1) % moe_freq == 0, so
    moe_freq=1 makes every FFN an MoE and moe_freq=2 every other one (the convention of
    fairseq's MoE branch); moe_freq=0 gives the dense encoder.
    """

    def __init__(self, cfg, dictionary, parallel: Optional[ExpertParallel] = None) -> None:
        """parallel: the experts' split over workers (expert parallelism; None: all here)."""
        super().__init__(dictionary)
        dim = cfg.encoder_embed_dim
        self.padding_idx = dictionary.pad()
        self.max_positions_ = cfg.max_positions
        self.embed_tokens = nn.Embedding(len(dictionary), dim, padding_idx=self.padding_idx)
        self.embed_positions = nn.Embedding(cfg.max_positions, dim)
        # [2, dim]: row 1 minus row 0 of BERT's token-type embeddings; zero when trained anew
        self.embed_segments = nn.Embedding(2, dim)
        nn.init.zeros_(self.embed_segments.weight)
        self.register_load_state_dict_pre_hook(_without_segments)
        self.layernorm_embedding = LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(cfg, moe=moe_args(cfg, i, parallel) if is_moe_layer(i, cfg.moe_freq)
                         else None)
            for i in range(cfg.encoder_layers)
        )

    def forward(self, src_tokens: torch.Tensor, return_all_hiddens: bool = False, **unused):
        """src_tokens: [B, T]. Returns features [B, T, C] and a dict with the MoE
        statistics of every MoE layer ("moe_aux") and, if asked, every layer's output
        ("inner_states")."""
        padding_mask = src_tokens.eq(self.padding_idx)  # [B, T]
        # positions count real tokens only, so left and right padding give the same result
        positions = (torch.cumsum(~padding_mask, dim=1) - 1).clamp(min=0)
        x = self.embed_tokens(src_tokens) + self.embed_positions(positions) + \
            self.embed_segments(segments(src_tokens, self.dictionary.eos()))
        x = self.dropout(self.layernorm_embedding(x))
        attend = ~padding_mask  # [B, T]
        inner_states = [x] if return_all_hiddens else []
        moe_aux = []
        for layer in self.layers:
            x, aux = layer(x, padding_mask, attend)
            if aux is not None:
                moe_aux.append(aux)
            if return_all_hiddens:
                inner_states.append(x)
        return x, {"inner_states": inner_states, "moe_aux": moe_aux}

    def max_positions(self) -> int:
        return self.max_positions_


def segments(src_tokens: torch.Tensor, eos: int) -> torch.Tensor:
    """[B, T] segment ids: 1 after the first eos of a row, else 0."""
    is_eos = src_tokens.eq(eos).long()
    return (torch.cumsum(is_eos, dim=1) - is_eos).clamp(max=1)


def _without_segments(module, state: dict, prefix: str, *_) -> None:
    """Checkpoints saved before segment embeddings existed: segment 1 starts as segment 0."""
    key = prefix + "embed_segments.weight"
    if key not in state:
        state[key] = torch.zeros_like(module.embed_segments.weight)


def load_encoder(cfg, state: dict, dictionary, source: str) -> OMoEEncoder:
    """The encoder of an omoe_roberta model state (its "encoder." keys), in eval mode.

    Stops with a ValueError naming `source` when the state does not fit cfg or dictionary
    (e.g. data binarised with another vocabulary)."""
    encoder = OMoEEncoder(cfg, dictionary).eval()
    encoder_state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    try:
        encoder.load_state_dict(encoder_state)
    except RuntimeError as e:
        raise ValueError(f"{source} does not match the data's dictionary or its own "
                         f"configuration: {str(e).splitlines()[0]}") from None
    return encoder


def is_moe_layer(index: int, moe_freq: int) -> bool:
    """Layer `index` (0-based) is MoE when moe_freq > 0 and (index + 1) % moe_freq == 0."""
    return moe_freq > 0 and (index + 1) % moe_freq == 0


def expert_ffn_dim(cfg) -> int:
    """Hidden size of each expert: --moe-expert-ffn-dim, or --encoder-ffn-embed-dim when it
    is 0 or absent (checkpoints saved before the option existed lack it)."""
    return utils.safe_getattr(cfg, "moe_expert_ffn_dim", 0) or cfg.encoder_ffn_embed_dim


def moe_args(cfg, index: int, parallel: Optional[ExpertParallel] = None) -> MoEArgs:
    """The arguments of the MoE layer at encoder layer `index` under model config cfg."""
    return MoEArgs(
        embed_dim=cfg.encoder_embed_dim,
        ffn_dim=expert_ffn_dim(cfg),
        num_experts=cfg.moe_experts,
        top_k=cfg.moe_top_k,
        activation_fn=cfg.activation_fn,
        activation_dropout=cfg.activation_dropout,
        layer_index=index,
        parallel=parallel,
    )
