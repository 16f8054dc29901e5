"""`omoe-export CHECKPOINT --out model.onnx`: a fine-tuned omoe_roberta classifier as one
self-contained ONNX file for ONNX Runtime, checked against PyTorch before it is reported.

The graph maps src_tokens [batch, seq] (int64, `<s> ... </s>` then padding: the
head reads the first token, as fairseq's RoBERTa head does) to
`logits` [batch, classes] and, for an MoE model, `experts` [batch, seq, moe layers, k]: the
experts each token was routed to (E for padding), so serving can check or log routing.
It is exported with torch.export (`torch.onnx.export(dynamo=True)`) at dynamic batch and
sequence sizes; the MoE dispatch has no data-dependent Python branch, so every expert stays
in the graph whatever the export example routed. The exported program
is constant-folded without onnxscript's size limits, so every expert's weights become
initializers of plain Gemm nodes: nothing is sliced per run, and dynamic int8 quantisation
sees every expert matrix.
"""

import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import onnx
import onnxruntime as ort
import onnxscript.optimizer
import torch
import torch.nn as nn
from fairseq.data import Dictionary
from fairseq.tasks.sentence_prediction import SentencePredictionTask
from onnxruntime.quantization import QuantType, quantize_dynamic
from tokenizers import Tokenizer

from ..convert.checkpoint import encoder_config, read_checkpoint
from ..data.movie_reviews import wordpiece_tokenizer
from ..models import OMoERobertaConfig, OMoERobertaModel
from ..models.encoder import OMoEEncoder, is_moe_layer
from .inference import at_least, quiet_logging, serving_parser, session
from .serving_info import ServingInfo

logger = logging.getLogger(__name__)

HEAD = "sentence_classification_head"
DEFAULT_OPSET = 20  # torch 2.13's default; torchlib builds at >= 18
# (batch, seq, padded) shapes the parity check runs at: none is the export example's
PARITY_SHAPES = ((1, 1, False), (1, 128, False), (32, 128, True), (3, 17, True))
ATOL, RTOL = 1e-4, 1e-3


class ExportedClassifier(nn.Module):
    """The inference forward of a classifier: no MoE statistics, no hidden states."""

    def __init__(self, model: OMoERobertaModel, head: str = HEAD) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.head = model.classification_heads[head]

    def forward(self, src_tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """src_tokens [B, T] -> logits [B, C] fp32 (+ experts [B, T, L, k] int64 if MoE)."""
        features, extra = self.encoder(src_tokens)
        logits = self.head(features).float()
        if not extra["moe_aux"]:
            return (logits,)
        return logits, torch.stack([aux.experts for aux in extra["moe_aux"]], dim=2)


def load_classifier(
    checkpoint: Path, data: Optional[Path] = None, head: str = HEAD,
    tokenizer: Optional[Path] = None,
) -> tuple[OMoERobertaModel, ServingInfo]:
    """The fine-tuned model of a fairseq-train checkpoint (eval mode) and what serving it needs.

    data: the binarised data directory it was trained on (input0/dict.txt, label/dict.txt);
    default: the one named in the checkpoint. tokenizer: a `tokenizers` JSON file; default:
    the pretrained encoder's WordPiece tokenizer, which omoe-prepare-data tokenises with."""
    state = read_checkpoint(checkpoint)
    cfg = encoder_config(state, checkpoint)
    weights = state["model"]
    out_proj = weights.get(f"classification_heads.{head}.out_proj.weight")
    if out_proj is None:
        raise ValueError(
            f"{checkpoint} has no classification head {head!r}: export a checkpoint written "
            "by fairseq-train (checkpoint_best.pt), not an imported or upcycled encoder"
        )
    task = state["cfg"].get("task") or {}
    data = Path(data or task.get("data") or "")
    if not (data / "input0" / "dict.txt").is_file():
        raise FileNotFoundError(
            f"no dictionary at {data / 'input0' / 'dict.txt'}: pass --data, the binarised data "
            "directory the checkpoint was fine-tuned on"
        )
    dictionary = SentencePredictionTask.load_dictionary(str(data / "input0" / "dict.txt"))
    regression = bool(task.get("regression_target", False))
    labels = [] if regression else _labels(data, out_proj.size(0))

    model = OMoERobertaModel(cfg, OMoEEncoder(cfg, dictionary))
    model.register_classification_head(head, num_classes=out_proj.size(0))
    others = "classification_heads."
    model_state = {k: v for k, v in weights.items()
                   if not k.startswith(others) or k.startswith(f"{others}{head}.")}
    try:
        model.load_state_dict(model_state)
    except RuntimeError as e:
        raise ValueError(f"{checkpoint} does not match {data}'s dictionary or its own "
                         f"configuration: {' '.join(str(e).split())[:400]}") from None
    try:
        tok = Tokenizer.from_file(str(tokenizer)) if tokenizer else wordpiece_tokenizer()
    except Exception as e:  # noqa: BLE001 - tokenizers raises untyped errors
        raise ValueError(f"{tokenizer} is not a tokenizers JSON file: {e}") from None
    return model.eval(), serving_info(cfg, dictionary, labels, tok, Path(checkpoint).name)


def serving_info(cfg: OMoERobertaConfig, dictionary: Dictionary, labels: list[str],
                 tokenizer: Tokenizer, source: str = "") -> ServingInfo:
    """What serving a model of config cfg needs (see ServingInfo)."""
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return ServingInfo(
        labels=labels, symbols=list(dictionary.symbols), tokenizer=tokenizer.to_str(),
        max_positions=cfg.max_positions, bos=dictionary.bos(), eos=dictionary.eos(),
        pad=dictionary.pad(), unk=dictionary.unk(),
        moe_layers=[i for i in range(cfg.encoder_layers) if is_moe_layer(i, cfg.moe_freq)],
        experts=cfg.moe_experts, top_k=cfg.moe_top_k, source=source,
    )


def _labels(data: Path, num_classes: int) -> list[str]:
    """Class names in output order: fairseq's label ids are dictionary ids minus nspecial."""
    path = data / "label" / "dict.txt"
    if not path.is_file():
        raise FileNotFoundError(f"no label dictionary at {path}: pass --data")
    labels = SentencePredictionTask.load_dictionary(str(path))
    return labels.symbols[labels.nspecial:labels.nspecial + num_classes]


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


def export_onnx(model: OMoERobertaModel, info: ServingInfo, out: Path, head: str = HEAD,
                opset: int = DEFAULT_OPSET) -> None:
    """Export model's classifier to out (one file with info in its metadata) and run
    onnx.checker's full check on it."""
    wrapper = ExportedClassifier(model, head).eval()
    example = torch.from_numpy(sample_tokens(info, batch=2, length=8, padded=True))
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", max=info.max_positions)}
    outputs = ["logits", "experts"] if info.moe_layers else ["logits"]
    program = torch.onnx.export(
        wrapper, (example,), None, input_names=["src_tokens"], output_names=outputs,
        dynamic_shapes=(dims,), opset_version=opset, optimize=False, verbose=False,
    )
    onnxscript.optimizer.optimize(program.model, input_size_limit=2**62, output_size_limit=2**62)
    program.model.metadata_props.update(info.to_metadata())
    program.save(str(out), external_data=False)
    onnx.checker.check_model(str(out), full_check=True)


def quantize_int8(fp32: Path, out: Path) -> None:
    """Dynamic int8 quantisation of every MatMul/Gemm weight except the routers' gates,
    which stay fp32 so that quantisation noise does not change which expert a token goes
    to; metadata is carried over."""
    model = onnx.load(str(fp32))
    gates = [n.name for n in model.graph.node
             if n.op_type == "Gemm" and "router.gate" in n.input[1]]
    gates += [f"{name}_MatMul" for name in gates]  # the quantiser's name after Gemm -> MatMul
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser warns on the root logger for every int tensor
    try:
        quantize_dynamic(fp32, out, weight_type=QuantType.QInt8, nodes_to_exclude=gates)
    finally:
        root.setLevel(level)
    quantized = onnx.load(str(out))
    onnx.helper.set_model_props(quantized, {p.key: p.value for p in model.metadata_props})
    onnx.save(quantized, str(out))
    onnx.checker.check_model(str(out), full_check=True)


def check_parity(model: OMoERobertaModel, info: ServingInfo, path: Path,
                 head: str = HEAD) -> list[Parity]:
    """Compare the ONNX model at path with PyTorch at PARITY_SHAPES (max_positions capped)."""
    wrapper = ExportedClassifier(model, head).eval()
    onnx_session = session(path, level=info.optimization_level)
    return [
        compare(wrapper, onnx_session,
                sample_tokens(info, batch, min(seq, info.max_positions), padded, seed=i),
                padded, info.pad)
        for i, (batch, seq, padded) in enumerate(PARITY_SHAPES)
    ]


def _report(parities: list[Parity]) -> str:
    return "; ".join(
        f"{p.shape[0]}x{p.shape[1]}{' padded' if p.padded else ''}: max |diff| {p.max_abs:.1e},"
        f" labels {p.labels_agree:.0%}, experts {p.experts_agree:.1%}" for p in parities
    )


def cli_main(argv: Optional[list[str]] = None) -> None:
    parser = serving_parser(
        "omoe-export", "Export a fine-tuned omoe_roberta checkpoint (encoder + classification "
        "head) to ONNX, with its tokenizer, dictionary and labels in the file's metadata, and "
        "check it against PyTorch.",
        "all", "ONNX Runtime graph optimisation level omoe-infer uses by default")
    parser.add_argument("checkpoint", type=Path, help="fairseq-train checkpoint (.pt)")
    parser.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    parser.add_argument("--data", type=Path, default=None,
                        help="binarised data directory the model was fine-tuned on (default: "
                        "the one recorded in the checkpoint)")
    parser.add_argument("--head", default=HEAD, help="classification head to export")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="tokenizers JSON the data was tokenised with (default: the "
                        "pretrained encoder's WordPiece, as omoe-prepare-data uses)")
    parser.add_argument("--opset", type=at_least(18), default=DEFAULT_OPSET,
                        help="ONNX opset (>= 18, torch's ONNX exporter)")
    parser.add_argument("--int8", action="store_true",
                        help="dynamically quantise weights to int8 (routers stay fp32)")
    args = parser.parse_args(argv)
    quiet_logging()
    try:
        model, info = load_classifier(args.checkpoint, args.data, args.head, args.tokenizer)
    except (ValueError, FileNotFoundError, OSError) as e:
        sys.exit(f"omoe-export: {e}")
    info.optimization_level = args.optimization_level
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # build beside the target and move into place only once checked: a failed export
    # leaves no file, and never half a file, under --out
    with tempfile.TemporaryDirectory(dir=args.out.parent) as tmp:
        model_path = Path(tmp) / "fp32.onnx"
        export_onnx(model, info, model_path, args.head, args.opset)
        parities = check_parity(model, info, model_path, args.head)
        logger.info(f"fp32 parity with PyTorch: {_report(parities)}")
        failed = [p for p in parities if not p.within_tolerance or p.experts_agree < 1.0]
        if failed:
            sys.exit(f"omoe-export: the ONNX model differs from PyTorch beyond atol {ATOL} / "
                     f"rtol {RTOL} or routes differently: {_report(failed)}")
        if args.int8:
            quantize_int8(model_path, Path(tmp) / "int8.onnx")
            model_path = Path(tmp) / "int8.onnx"
            logger.info(f"int8 agreement with PyTorch: "
                        f"{_report(check_parity(model, info, model_path, args.head))}")
        model_path.replace(args.out)
    size = args.out.stat().st_size / 2**20
    logger.info(f"wrote {args.out} ({size:.1f} MB, opset {args.opset}, "
                f"{'int8' if args.int8 else 'fp32'}, labels {info.labels or 'regression'})")
