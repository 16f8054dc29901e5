"""Multi-head self-attention, and the one operator it becomes in an exported graph.

In eager mode (training, fairseq-validate, PyTorch inference) attention is three projections
and one scaled_dot_product_attention call. Under torch.export it is one custom operator,
`omoe::self_attention`, with the same eager semantics, which the ONNX exporter writes as ONNX
Runtime's fused `com.microsoft.Attention` (see export/onnx_ops.py): torch.export would
otherwise decompose attention into a dozen elementwise operators over [B, H, T, T], and ONNX
Runtime, which recognises none of them as attention, spent more than a third of an fp32
forward on them at 32 x 128 tokens.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


@torch.library.custom_op("omoe::self_attention", mutates_args=())
def fused_self_attention(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                         attend: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Self-attention with packed projections, before the output projection.

    x: [B, T, C]; weight: [3C, C] the query, key and value projections stacked (nn.Linear's
    [out, in] layout); bias: [3C]; attend: [B, T] bool, True where a key may be attended.
    Returns [B, T, C]."""
    bsz, seq_len, dim = x.shape
    q, k, v = F.linear(x, weight, bias).view(bsz, seq_len, 3, num_heads, -1).permute(2, 0, 3, 1, 4)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=attend[:, None, None, :])
    return y.transpose(1, 2).reshape(bsz, seq_len, dim)


@fused_self_attention.register_fake
def _(x, weight, bias, attend, num_heads):
    return torch.empty_like(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention with BERT's separate query/key/value projections."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(
                f"--encoder-embed-dim ({embed_dim}) must be divisible by "
                f"--encoder-attention-heads ({num_heads})"
            )
        self.num_heads = num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def packed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The query, key and value projections stacked: weight [3C, C], bias [3C]."""
        projections = (self.q_proj, self.k_proj, self.v_proj)
        return (torch.cat([p.weight for p in projections]),
                torch.cat([p.bias for p in projections]))

    def forward(self, x: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        """x: [B, T, C]; attend: [B, T] bool, True where a key may be attended."""
        if torch.compiler.is_exporting():  # one operator in the graph (module docstring)
            return self.out_proj(fused_self_attention(x, *self.packed(), attend, self.num_heads))
        bsz, seq_len, dim = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:  # [B, T, C] -> [B, H, T, C / H]
            return t.view(bsz, seq_len, self.num_heads, -1).transpose(1, 2)

        y = F.scaled_dot_product_attention(
            heads(self.q_proj(x)),
            heads(self.k_proj(x)),
            heads(self.v_proj(x)),
            attn_mask=attend[:, None, None, :],
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out_proj(y.transpose(1, 2).reshape(bsz, seq_len, dim))
