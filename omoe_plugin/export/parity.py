"""ONNX Runtime against PyTorch: the exported graph is run on fresh token batches at shapes
other than the export example's, and logits and routed experts are compared."""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import onnxruntime as ort
import torch

from ..models import OMoERobertaModel
from .classifier import ExportedClassifier
from .runtime import session
from .serving_info import ServingInfo

# (batch, seq, padded) shapes the parity check runs at: none is the export example's
PARITY_SHAPES = ((1, 1, False), (1, 128, False), (32, 128, True), (3, 17, True))
ATOL, RTOL = 1e-4, 1e-3


def sample_tokens(info: ServingInfo, batch: int, length: int, padded: bool,
                  seed: int = 0) -> np.ndarray:
    """[batch, length] random sentences of real symbols, <s>-prefixed and </s>-terminated;
    with padded, row i is shorter by i * length // batch tokens (right padding)."""
    rng = np.random.default_rng(seed)
    first = max(info.bos, info.eos, info.pad, info.unk) + 1
    tokens = rng.integers(first, len(info.symbols) - 1, size=(batch, length))  # no <mask>
    for i in range(batch):
        n = max(1, length - (i * length // batch if padded else 0))
        tokens[i, 0] = info.bos
        tokens[i, n - 1] = info.eos if n > 1 else info.bos
        tokens[i, n:] = info.pad
    return tokens


@dataclass
class Parity:
    shape: tuple[int, int]
    padded: bool
    max_abs: float  # largest |logit difference|
    within_tolerance: bool  # |ort - torch| <= ATOL + RTOL * |torch| everywhere
    labels_agree: float  # fraction of rows with the same argmax
    experts_agree: float  # fraction of (non-padding token, layer, slot) with the same expert


@torch.no_grad()
def compare(wrapper: ExportedClassifier, onnx_session: ort.InferenceSession,
            tokens: np.ndarray, padded: bool, pad: int) -> Parity:
    """How the ONNX model's outputs on tokens agree with PyTorch's."""
    expected = [t.numpy() for t in wrapper(torch.from_numpy(tokens))]
    actual = onnx_session.run(None, {"src_tokens": tokens})
    diff = np.abs(actual[0] - expected[0])
    experts_agree = 1.0
    if len(expected) > 1:
        real = tokens != pad
        experts_agree = float((actual[1] == expected[1])[real].mean())
    return Parity(
        shape=tokens.shape, padded=padded, max_abs=float(diff.max()),
        within_tolerance=bool((diff <= ATOL + RTOL * np.abs(expected[0])).all()),
        labels_agree=float((actual[0].argmax(-1) == expected[0].argmax(-1)).mean()),
        experts_agree=experts_agree,
    )


def check_parity(model: OMoERobertaModel, info: ServingInfo, path: Path,
                 head: Optional[str] = None) -> list[Parity]:
    """Compare the ONNX model at path with PyTorch at PARITY_SHAPES (max_positions capped)."""
    wrapper = ExportedClassifier(model, head).eval()
    onnx_session = session(path, level=info.optimization_level)
    return [
        compare(wrapper, onnx_session,
                sample_tokens(info, batch, min(seq, info.max_positions), padded, seed=i),
                padded, info.pad)
        for i, (batch, seq, padded) in enumerate(PARITY_SHAPES)
    ]


def report(parities: list[Parity]) -> str:
    return "; ".join(
        f"{p.shape[0]}x{p.shape[1]}{' padded' if p.padded else ''}: max |diff| {p.max_abs:.1e},"
        f" labels {p.labels_agree:.0%}, experts {p.experts_agree:.1%}" for p in parities
    )
