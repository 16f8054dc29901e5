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
import warnings
from pathlib import Path
from typing import Optional

import onnx
import onnxscript.optimizer
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic

from ..models import OMoERobertaModel
from ..models.omoe_roberta import SPAN_HEAD, TOKEN_HEAD
from . import text_model
from .classifier import HEAD, ExportedClassifier, load_classifier
from .inference import at_least, quiet_logging, serving_parser
from .onnx_ops import TRANSLATIONS
from .parity import ATOL, RTOL, check_parity, report, sample_tokens
from .serving_info import ServingInfo

logger = logging.getLogger(__name__)
# torch's exporter says at every export that torchvision (not needed) is missing, and warns
# about its own deprecated tree-spec check: neither concerns the model being exported
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", category=FutureWarning,
                        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")

DEFAULT_OPSET = 20  # torch 2.13's default; torchlib builds at >= 18


def export_onnx(model: OMoERobertaModel, info: ServingInfo, out: Path,
                head: Optional[str] = None, opset: int = DEFAULT_OPSET) -> None:
    """Export model's classifier (head: see ExportedClassifier) to out (one file with info in
    its metadata) and run onnx.checker's full check on it."""
    wrapper = ExportedClassifier(model, head).eval()
    example = torch.from_numpy(sample_tokens(info, batch=2, length=8, padded=True))
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", max=info.max_positions)}
    outputs = ["logits", "experts"] if info.moe_layers else ["logits"]
    with torch.no_grad():  # the layers take their inference path (StackedExperts._ffn)
        program = torch.onnx.export(
            wrapper, (example,), None, input_names=["src_tokens"], output_names=outputs,
            dynamic_shapes=(dims,), opset_version=opset, optimize=False, verbose=False,
            custom_translation_table=TRANSLATIONS,
        )
    onnxscript.optimizer.optimize(program.model, input_size_limit=2**62, output_size_limit=2**62)
    program.model.metadata_props.update(info.to_metadata())
    program.save(str(out), external_data=False)
    onnx.checker.check_model(str(out), full_check=True)


def quantize_int8(fp32: Path, out: Path) -> None:
    """Dynamic int8 quantisation of every MatMul/Gemm/Attention weight except the routers'
    gates, which stay fp32 so that quantisation noise does not change which expert a token
    goes to; metadata is carried over. Weights get one scale per output channel: on the demo
    model one scale per tensor lost 0.66 points of test accuracy, per channel none, at the
    same speed."""
    model = onnx.load(str(fp32))
    gates = [n.name for n in model.graph.node
             if n.op_type == "Gemm" and "router.gate" in n.input[1]]
    gates += [f"{name}_MatMul" for name in gates]  # the quantiser's name after Gemm -> MatMul
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser warns on the root logger for every int tensor
    try:
        quantize_dynamic(fp32, out, weight_type=QuantType.QInt8, nodes_to_exclude=gates,
                         per_channel=True)
    finally:
        root.setLevel(level)
    quantized = onnx.load(str(out))
    onnx.helper.set_model_props(quantized, {p.key: p.value for p in model.metadata_props})
    onnx.save(quantized, str(out))
    onnx.checker.check_model(str(out), full_check=True)


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
    parser.add_argument("--head", default=None,
                        help=f"head to export (default: the task's: {HEAD}, {TOKEN_HEAD} or "
                        f"{SPAN_HEAD})")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="the tokenizer the data was tokenised with: a tokenizers JSON, a "
                        "BERT vocab.txt or a sentencepiece model (default: the one "
                        "omoe-prepare-data saved in the data directory)")
    parser.add_argument("--opset", type=at_least(18), default=DEFAULT_OPSET,
                        help="ONNX opset (>= 18, torch's ONNX exporter)")
    parser.add_argument("--int8", action="store_true",
                        help="dynamically quantise weights to int8 (routers stay fp32)")
    parser.add_argument("--raw-text", action="store_true",
                        help="also write OUT's raw-text model beside it (model.onnx -> "
                        "model.text.onnx): input one sentence as a string, the tokenizer in "
                        "the graph (onnxruntime-extensions: pip install 'omoe-plugin[text]'); "
                        "single-sentence classifiers")
    args = parser.parse_args(argv)
    quiet_logging()
    try:
        if args.raw_text:
            text_model.extensions_library()
        model, info = load_classifier(args.checkpoint, args.data, args.head, args.tokenizer)
        if args.raw_text:
            text_model.check_supported(info)
    except (ImportError, ValueError, FileNotFoundError, OSError) as e:
        sys.exit(f"omoe-export: {e}")
    info.optimization_level = args.optimization_level
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # build beside the target and move into place only once checked: a failed export
    # leaves no file, and never half a file, under --out
    with tempfile.TemporaryDirectory(dir=args.out.parent) as tmp:
        model_path = Path(tmp) / "fp32.onnx"
        export_onnx(model, info, model_path, opset=args.opset)
        parities = check_parity(model, info, model_path)
        logger.info(f"fp32 parity with PyTorch: {report(parities)}")
        failed = [p for p in parities if not p.within_tolerance or p.experts_agree < 1.0]
        if failed:
            sys.exit(f"omoe-export: the ONNX model differs from PyTorch beyond atol {ATOL} / "
                     f"rtol {RTOL} or routes differently: {report(failed)}")
        if args.int8:
            quantize_int8(model_path, Path(tmp) / "int8.onnx")
            model_path = Path(tmp) / "int8.onnx"
            logger.info(f"int8 agreement with PyTorch: "
                        f"{report(check_parity(model, info, model_path))}")
        if args.raw_text:
            text_path = text_model.text_model_path(args.out)
            try:
                text_model.build_text_model(model_path, Path(tmp) / "text.onnx")
            except ValueError as e:
                sys.exit(f"omoe-export: {e}")
            (Path(tmp) / "text.onnx").replace(text_path)
        model_path.replace(args.out)
    size = args.out.stat().st_size / 2**20
    logger.info(f"wrote {args.out} ({size:.1f} MB, opset {args.opset}, "
                f"{'int8' if args.int8 else 'fp32'}, labels {info.labels or 'regression'})")
    if args.raw_text:
        logger.info(f"wrote {text_path}: raw text in, the tokenizer in the graph (the same ids "
                    f"as the Python tokenizer on {len(text_model.PROBES) + 1} probe texts)")
