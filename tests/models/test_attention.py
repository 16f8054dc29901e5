"""Self-attention: the fused operator an export sees computes what eager attention does."""

import pytest
import torch

from omoe_plugin.models.attention import SelfAttention, fused_self_attention


@pytest.mark.parametrize("batch, seq, heads", ((1, 1, 2), (3, 7, 4), (2, 16, 1)))
def test_the_exported_operator_equals_eager_attention(batch, seq, heads):
    torch.manual_seed(batch + seq)
    attention = SelfAttention(embed_dim=8, num_heads=heads, dropout=0.0).eval()
    x = torch.randn(batch, seq, 8)
    attend = torch.ones(batch, seq, dtype=torch.bool)
    attend[0, seq // 2 + 1:] = False  # padding on the right of the first row
    fused = attention.out_proj(fused_self_attention(x, *attention.packed(), attend, heads))
    torch.testing.assert_close(fused, attention(x, attend), atol=1e-6, rtol=1e-5)


def test_torch_export_sees_one_attention_operator():
    attention = SelfAttention(embed_dim=8, num_heads=2, dropout=0.0).eval()
    x, attend = torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool)
    targets = [str(n.target) for n in torch.export.export(attention, (x, attend)).graph.nodes]
    assert targets.count("omoe.self_attention.default") == 1
    assert not [t for t in targets if "scaled_dot_product" in t]
