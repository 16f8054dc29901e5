"""What serving top-1 experts costs at small batches when the dispatch costs nothing: a stack
of FFN sublayers in ONNX Runtime, dense (one FFN over all N tokens) against E experts (E FFNs
of the same size, each over N / E tokens: top-1 routing with an even load), so both do the
same arithmetic on the same tokens and the experts only hold E times the weights.

    python scripts/bench_expert_bandwidth.py [--tokens 128] [--layers 6] [--experts 4]

Defaults: the demo model's shapes at 1 x 128 tokens (d = 384, FFN 1536, 6 layers). Reported:
median latency of each (alternating rounds), their ratio, the weights each reads per
forward, for the model's depth and for one layer (whose weights stay in cache). The last line printed is one JSON object.
"""

import argparse
import json
import statistics
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def ffn_stack(tokens_dim: int, hidden: int, layers: int, experts: int, seed: int = 0):
    """ONNX model: `layers` FFN sublayers over x [n, d]; with experts > 1 each splits its input
    into `experts` equal blocks, runs one FFN per block and concatenates them back."""
    rng = np.random.default_rng(seed)
    d, nodes, weights, previous = tokens_dim, [], [], "x"
    for layer in range(layers):
        blocks = [previous] if experts == 1 else [f"x{layer}_{e}" for e in range(experts)]
        if experts > 1:
            nodes.append(helper.make_node("Split", [previous], blocks, axis=0,
                                          num_outputs=experts))
        outputs = []
        for e, block in enumerate(blocks):
            name = f"{layer}_{e}"
            for matrix, shape in ((f"w1_{name}", (hidden, d)), (f"w2_{name}", (d, hidden))):
                weights.append(numpy_helper.from_array(
                    (rng.standard_normal(shape) * 0.05).astype(np.float32), matrix))
            for vector, size in ((f"b1_{name}", hidden), (f"b2_{name}", d)):
                weights.append(numpy_helper.from_array(np.zeros(size, np.float32), vector))
            nodes += [
                helper.make_node("Gemm", [block, f"w1_{name}", f"b1_{name}"], [f"z{name}"],
                                 transB=1),
                helper.make_node("Gelu", [f"z{name}"], [f"h{name}"]),
                helper.make_node("Gemm", [f"h{name}", f"w2_{name}", f"b2_{name}"], [f"y{name}"],
                                 transB=1),
            ]
            outputs.append(f"y{name}")
        previous = f"out{layer}"
        nodes.append(helper.make_node("Concat", outputs, [previous], axis=0) if experts > 1
                     else helper.make_node("Identity", outputs, [previous]))
    graph = helper.make_graph(
        nodes, "ffn_stack", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", d])],
        [helper.make_tensor_value_info(previous, TensorProto.FLOAT, ["n", d])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def compare(tokens: int, dim: int, hidden: int, layers: int, experts: int, threads: int,
            repeats: int, rounds: int) -> dict:
    """Median over rounds of each stack's median latency (ms); the two alternate round by round,
    one session alive at a time (an idle session's spinning threads slow the other)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    models = {kind: ffn_stack(dim, hidden, layers, n).SerializeToString()
              for kind, n in (("dense", 1), ("experts", experts))}
    x = {"x": np.random.default_rng(1).standard_normal((tokens, dim)).astype(np.float32)}
    medians = {kind: [] for kind in models}
    for _ in range(rounds):
        for kind, model in models.items():
            session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
            for _ in range(5):
                session.run(None, x)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                session.run(None, x)
                times.append(1000 * (time.perf_counter() - start))
            medians[kind].append(statistics.median(times))
            del session
    dense, expert = (statistics.median(medians[kind]) for kind in ("dense", "experts"))
    megabytes = 2 * dim * hidden * 4 * layers / 2**20  # fp32 FFN weights of the dense stack
    return {"layers": layers, "dense_ms": round(dense, 3), "experts_ms": round(expert, 3),
            "ratio": round(expert / dense, 2), "dense_weights_mb": round(megabytes, 1),
            "experts_weights_mb": round(experts * megabytes, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--hidden", type=int, default=1536)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=50, help="timed runs per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results = {}
    for name, layers in (("in_cache", 1), ("model", args.layers)):
        results[name] = compare(args.tokens, args.dim, args.hidden, layers, args.experts,
                                args.threads, args.repeats, args.rounds)
        print(name, results[name])
    print(json.dumps(results))


if __name__ == "__main__":
    main()
