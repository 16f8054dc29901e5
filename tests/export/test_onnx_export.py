"""ONNX export of omoe_roberta classifiers: parity with PyTorch at shapes other than the
export example (padded and not), every expert kept in the graph, attention as one fused
operator, metadata, int8."""

import onnx
import onnxruntime as ort
import pytest
import torch

from omoe_plugin.export.runtime import DISABLED_FUSIONS, session
from omoe_plugin.export.classifier import ExportedClassifier
from omoe_plugin.export.onnx_export import quantize_int8
from omoe_plugin.export.parity import compare, sample_tokens
from omoe_plugin.export.serving_info import ServingInfo
from tests.conftest import HEAD, TINY_SHAPE, export, tiny_classifier

EXPERTS, TOP_K, LAYERS = (TINY_SHAPE[k] for k in ("moe_experts", "moe_top_k", "encoder_layers"))


@pytest.fixture(scope="module")
def exported(task, tiny_onnx):
    model, info = tiny_classifier(task)
    return model, info, tiny_onnx, session(tiny_onnx)


@pytest.mark.parametrize("batch, seq, padded", [
    (1, 1, False), (1, 128, False), (32, 1, False), (32, 128, False), (32, 128, True),
    (5, 37, True),
])
def test_fp32_parity_at_shapes_other_than_the_example(exported, batch, seq, padded):
    model, info, _, onnx_session = exported
    tokens = sample_tokens(info, batch, seq, padded, seed=batch + seq)
    parity = compare(ExportedClassifier(model, HEAD), onnx_session, tokens, padded, info.pad)
    assert parity.within_tolerance, parity.max_abs
    assert parity.experts_agree == 1.0 and parity.labels_agree == 1.0


def test_every_expert_is_in_the_graph_and_used(exported):
    model, info, path, _ = exported
    graph = onnx.load(str(path)).graph
    shapes = {i.name: tuple(i.dims) for i in graph.initializer}
    cfg = model.cfg
    fc1 = (cfg.encoder_ffn_embed_dim, cfg.encoder_embed_dim)
    expert_gemms = [n for n in graph.node if n.op_type == "Gemm"
                    and shapes.get(n.input[1]) in (fc1, fc1[::-1])]
    assert len(expert_gemms) == LAYERS * EXPERTS * 2
    assert not [n for n in graph.node if n.op_type in ("If", "Loop")]
    # the parity test at 32 x 128 routes tokens to every expert of every layer
    _, experts = ExportedClassifier(model, HEAD)(torch.from_numpy(
        sample_tokens(info, 32, 128, padded=True, seed=32 + 128)))
    for layer in range(LAYERS):
        assert set(experts[:, :, layer].unique().tolist()) >= set(range(EXPERTS))


def test_attention_is_one_fused_operator_per_layer(exported):
    _, _, path, _ = exported
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("Attention") == LAYERS
    # the routers' softmax only: no attention decomposed into elementwise operators
    assert ops.count("Softmax") == LAYERS and "IsNaN" not in ops


def test_serving_sessions_keep_residual_add_and_layer_norm_apart(exported, tmp_path):
    _, _, path, _ = exported
    optimized = tmp_path / "optimized.onnx"
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(optimized)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                         disabled_optimizers=DISABLED_FUSIONS)
    ops = [n.op_type for n in onnx.load(str(optimized)).graph.node]
    assert "SkipLayerNormalization" not in ops and "LayerNormalization" in ops
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    assert "SkipLayerNormalization" in [n.op_type for n in onnx.load(str(optimized)).graph.node]


def test_metadata_round_trips(exported):
    _, info, path, onnx_session = exported
    assert ServingInfo.from_metadata(onnx_session.get_modelmeta().custom_metadata_map, path) == info
    assert info.moe_layers == list(range(LAYERS))
    assert info.experts == EXPERTS and info.top_k == TOP_K


def test_int8_quantises_experts_keeps_routers_fp32_and_metadata(exported, tmp_path):
    model, info, path, onnx_session = exported
    quantize_int8(path, tmp_path / "int8.onnx")
    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    assert sum(n.op_type == "MatMulInteger" for n in graph.node) >= LAYERS * EXPERTS * 2
    assert sum(n.op_type == "QAttention" for n in graph.node) == LAYERS
    scales = {i.name: tuple(i.dims) for i in graph.initializer if i.name.endswith("_scale")}
    ffn = model.cfg.encoder_ffn_embed_dim
    assert (ffn,) in scales.values()  # one scale per output channel of an expert's fc1
    gates = [n.op_type for n in graph.node if any("router.gate" in i for i in n.input)]
    assert sorted(gates) in (["Gemm"] * LAYERS, ["MatMul"] * LAYERS)
    int8 = session(tmp_path / "int8.onnx")
    assert ServingInfo.from_metadata(int8.get_modelmeta().custom_metadata_map, path) == info
    tokens = sample_tokens(info, 32, 64, padded=True, seed=1)
    parity = compare(ExportedClassifier(model, HEAD), int8, tokens, True, info.pad)
    assert parity.max_abs < 0.1 and parity.experts_agree > 0.8


def test_a_dense_model_exports_logits_only(task, tmp_path):
    model, info = export(task, tmp_path / "dense.onnx", moe_freq=0)
    assert info.moe_layers == []
    onnx_session = session(tmp_path / "dense.onnx")
    assert [o.name for o in onnx_session.get_outputs()] == ["logits"]
    tokens = sample_tokens(info, 3, 9, padded=True)
    assert compare(ExportedClassifier(model, HEAD), onnx_session, tokens, True, info.pad)\
        .within_tolerance
