"""How the model's own operators are written in ONNX: `omoe::self_attention`
(models/attention.py) as ONNX Runtime's fused `com.microsoft.Attention` (packed QKV
projection, scaled dot-product, softmax and the weighted sum in one kernel; its int8 form,
QAttention, is what dynamic quantisation turns it into)."""

import logging

import onnxscript
import torch
from onnx import TensorProto
from onnxscript import BOOL, FLOAT
from onnxscript import opset18 as op

from ..models import attention  # noqa: F401 - registers omoe::self_attention

# onnxscript logs every step of compiling the function below at DEBUG, and importing fairseq
# (its text_to_speech task) sets the root logger to DEBUG: keep onnxscript to warnings
logging.getLogger("onnxscript").setLevel(logging.WARNING)
MICROSOFT = onnxscript.values.Opset("com.microsoft", 1)
INT32 = TensorProto.INT32


@onnxscript.script(MICROSOFT)
def self_attention(x: FLOAT, weight: FLOAT, bias: FLOAT, attend: BOOL, num_heads: int) -> FLOAT:
    """x [B, T, C]; weight [3C, C] (constant-folded into Attention's [C, 3C]); bias [3C];
    attend [B, T] bool -> [B, T, C]. Attention's 2-D mask is 1 where a key is attended; a
    masked key's score is lowered by 10000 before the softmax, so its weight underflows to
    exactly 0 in fp32, as with scaled_dot_product_attention's -inf, unless the scores of one
    query differ by thousands."""
    mask = op.Cast(attend, to=INT32)
    y = MICROSOFT.Attention(x, op.Transpose(weight, perm=[1, 0]), bias, mask,
                            num_heads=num_heads)
    return y


TRANSLATIONS = {torch.ops.omoe.self_attention.default: self_attention}
