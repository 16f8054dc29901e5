"""How the model's own operators are written in ONNX: `omoe::self_attention`
(models/attention.py) as ONNX Runtime's fused `com.microsoft.Attention` (packed QKV
projection, scaled dot-product, softmax and the weighted sum in one kernel; its int8 form,
QAttention, is what dynamic quantisation turns it into)."""

import onnxscript
from onnxscript import BOOL, FLOAT
from onnxscript import opset18 as op

from ..models import attention  # registers omoe::self_attention

MICROSOFT = onnxscript.values.Opset("com.microsoft", 1)


@onnxscript.script(MICROSOFT)
def self_attention(x: FLOAT, weight: FLOAT, bias: FLOAT, attend: BOOL, num_heads: int) -> FLOAT:
    """x [B, T, C]; weight [3C, C] (constant-folded into Attention's [C, 3C]); bias [3C];
    attend [B, T] bool -> [B, T, C]. Attention's 2-D mask is 1 where a key is attended; a
    masked key's score gets -10000 before the softmax, whose exponential is exactly 0 in fp32,
    as with the -inf of scaled_dot_product_attention."""
    mask = op.Cast(attend, to=6)
    y = MICROSOFT.Attention(x, op.Transpose(weight, perm=[1, 0]), bias, mask,
                            num_heads=num_heads)
    return y


TRANSLATIONS = {attention.fused_self_attention._opoverload: self_attention}
