"""`omoe-export --raw-text`: beside the token-id model, one self-contained ONNX file whose
input is the raw sentence (`model.text.onnx`): the tokenizer runs inside the graph as an
onnxruntime-extensions operator (`pip install omoe-plugin[text]`), so a client that speaks
only ONNX Runtime needs no Python tokenizer.

The graph, for a single-sentence classifier:

    text  string [1]
      -> the tokenizer's ids, no special tokens     (BertTokenizer, SentencepieceTokenizer or
                                                    GPT2Tokenizer, domain ai.onnx.contrib)
      -> the model's ids                            (Gather: a table built from the dictionary,
                                                    unknown tokens -> <unk>, as serving maps)
      -> <s> first max_positions - 2 ids </s>       (as OMoEClassifier cuts a long sentence)
      -> the token-id model's graph, unchanged.

Outputs: the token-id model's (`logits` [1, classes], `experts` for an MoE model), plus
`src_tokens` [1, seq] (the ids the model read) and `truncated` (bool: the sentence was cut).
The file keeps the token-id model's metadata (labels and the rest, `ServingInfo`) and adds
`omoe.input` = `text`.

Its sessions need the extensions' operators registered (`text_session`). The in-graph
tokenizer is the extensions' own implementation, not the Python one: for the demo's
WordPiece it gives the same ids on all 10,668 movie-review sentences and on long texts cut
to the positions, and the same logits, but not on every text: a special token written in
the text (`[CLS]`) is split as text, accents are stripped differently outside Latin scripts
(Greek, Cyrillic `й`), Hangul is not split into jamo, and NUL characters are kept. So
`build_text_model` checks it on PROBES and refuses a tokenizer that reads them differently.
"""

import json
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import onnxruntime as ort

from ..data.subword import SubwordTokenizer
from .runtime import DISABLED_FUSIONS, OPTIMIZATION_LEVELS
from .serving_info import PREFIX, ServingInfo

CONTRIB = "ai.onnx.contrib"  # onnxruntime-extensions' operator domain
INPUT_KEY = PREFIX + "input"  # metadata: "text" in a raw-text model

# Sentences the in-graph tokenizer must tokenise as the Python one before a file is written:
# casing, punctuation, contractions, numbers, Latin accents, CJK characters, whitespace,
# a word longer than WordPiece's 100 characters, and (build_text_model adds it) a text
# longer than the model's positions.
PROBES = (
    "Take Care of My Cat offers a refreshingly different slice of Asian cinema.",
    "It's not a bad film, but it doesn't know what it wants to be -- 3.5/10, $7 wasted!",
    "SHOUTING?!! \"Quoted\" (parenthesised) [bracketed] {braced} <angled> e.g. U.S.A.",
    "Café déjà vu: a naïve résumé of Müller's Ångström ﬁlm, 50% off.",
    "我喜欢这部电影 and 日本語 too",
    "tabs\tand  double  spaces\u00a0and a no-break space",
    "x" * 120 + " a word too long for WordPiece",
)


def text_model_path(model: Path) -> Path:
    """Where the raw-text model of `model` goes: model.onnx -> model.text.onnx."""
    model = Path(model)
    stem = model.name[:-len(".onnx")] if model.name.endswith(".onnx") else model.name
    return model.with_name(stem + ".text.onnx")


def extensions_library() -> str:
    """The onnxruntime-extensions operator library, or ImportError saying how to install it."""
    try:
        import onnxruntime_extensions
    except ImportError:
        raise ImportError("the raw-text model needs onnxruntime-extensions: "
                          "pip install 'omoe-plugin[text]'") from None
    return onnxruntime_extensions.get_library_path()


def text_session(path: Path, threads: int = 0,
                 level: Optional[str] = None) -> ort.InferenceSession:
    """An ONNX Runtime CPU session of a raw-text model, set up as serving sets up the token-id
    model's (`runtime.session`: threads, the optimisation level stored at export unless
    `level`, residual Add + LayerNormalization unfused) with the extensions' operators."""
    path = Path(path)
    level = level or ServingInfo.read(path).optimization_level
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = OPTIMIZATION_LEVELS[level]
    options.register_custom_ops_library(extensions_library())
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=DISABLED_FUSIONS)


def build_text_model(model: Path, out: Path, probes: Iterable[str] = PROBES) -> None:
    """Write the raw-text model of the token-id model at `model` to `out` (see the module's
    docstring) and check that it reads every probe (and a text longer than the model's
    positions) as `OMoEClassifier.encode` does; ValueError for a model or tokenizer it cannot
    put in a graph, or one whose in-graph tokenizer reads a probe differently."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    extensions_library()  # fail before the work when the extensions are missing
    info = ServingInfo.read(model)
    nodes, initializers = check_supported(info)
    graph_model = onnx.load(str(model))
    graph = graph_model.graph
    if [i.name for i in graph.input] != ["src_tokens"]:
        raise ValueError(f"{model} is not an omoe-export token-id model (inputs "
                         f"{[i.name for i in graph.input]})")
    keep = info.max_positions - 2
    constants = {"text.one": [1], "text.last": [-1], "text.zero": [0], "text.keep": [keep],
                 "text.bos": [info.bos], "text.eos": [info.eos]}
    initializers += [numpy_helper.from_array(np.array(v, np.int64), k)
                     for k, v in constants.items()]
    nodes += [
        helper.make_node("Gather", ["text.table", "text.tokenizer_ids"], ["text.ids"], axis=0),
        helper.make_node("Slice", ["text.ids", "text.zero", "text.keep", "text.zero"],
                         ["text.kept"]),
        helper.make_node("Shape", ["text.ids"], ["text.count"]),
        helper.make_node("Greater", ["text.count", "text.keep"], ["text.truncated"]),
        helper.make_node("Squeeze", ["text.truncated", "text.zero"], ["truncated"]),
        helper.make_node("Concat", ["text.bos", "text.kept", "text.eos"], ["text.sequence"],
                         axis=0),
        helper.make_node("Unsqueeze", ["text.sequence", "text.zero"], ["src_tokens"]),
    ]
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + old)
    graph.initializer.extend(initializers)
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info("text", TensorProto.STRING, [1]))
    graph.output.extend([
        helper.make_tensor_value_info("src_tokens", TensorProto.INT64, [1, "seq"]),
        helper.make_tensor_value_info("truncated", TensorProto.BOOL, []),
    ])
    graph_model.opset_import.append(helper.make_opsetid(CONTRIB, 1))
    helper.set_model_props(graph_model, {**{p.key: p.value for p in graph_model.metadata_props},
                                         INPUT_KEY: "text"})
    out = Path(out)
    onnx.save(graph_model, str(out))
    long = " ".join(PROBES[:3]) * (info.max_positions // 16 + 1)  # past max_positions
    try:
        differ = compare_ids(info, text_session(out, threads=1), [*probes, long])
    except Exception:
        out.unlink()
        raise
    if differ:
        out.unlink()
        text, want, got = differ[0]
        raise ValueError(
            f"the in-graph tokenizer reads {len(differ)} probe text(s) differently from the "
            f"Python tokenizer, e.g. {text[:80]!r}: {got[:12]}... against {want[:12]}...; no "
            "raw-text model written")


def check_supported(info: ServingInfo) -> tuple[list, list]:
    """ValueError unless a raw-text model can be made of a model of this ServingInfo (a
    single-sentence classifier or regressor whose tokenizer an extensions operator reads);
    else its tokenizer's nodes and initializers (`tokenizer_graph`)."""
    if info.kind != "sentences" or info.pairs:
        raise ValueError("a raw-text model is made for single-sentence classifiers (and "
                         "regressors) only, not for sentence pairs, token tagging or QA")
    return tokenizer_graph(info)


def compare_ids(info: ServingInfo, text_model: ort.InferenceSession,
                texts: Iterable[str]) -> list[tuple[str, list[int], list[int]]]:
    """(text, Python ids, in-graph ids) of each text on which the raw-text model's
    `src_tokens` or `truncated` differ from `OMoEClassifier.encode`'s."""
    from .sentences import OMoEClassifier

    python = OMoEClassifier.__new__(OMoEClassifier)  # its encoding only: no session
    python.info = info
    python.tokenizer = SubwordTokenizer.from_text(info.tokenizer_kind, info.tokenizer)
    python.index = {symbol: i for i, symbol in enumerate(info.symbols)}
    differ = []
    for text in texts:
        (want, cut), = python.encode_batch([text])
        got, graph_cut = text_model.run(["src_tokens", "truncated"], {"text": np.array([text])})
        if got[0].tolist() != want or bool(graph_cut) != cut:
            differ.append((text, want, got[0].tolist()))
    return differ


def tokenizer_graph(info: ServingInfo) -> tuple[list, list]:
    """Nodes from `text` to `text.tokenizer_ids` (int64 [n]: the tokenizer's own ids, no
    special tokens, no truncation) and initializers, `text.table` among them: the model id
    of each of the tokenizer's ids, as `ServedModel.ids` maps its tokens."""
    from onnx import numpy_helper

    tokenizer = SubwordTokenizer.from_text(info.tokenizer_kind, info.tokenizer)
    vocabulary = tokenizer.vocabulary()
    index = {symbol: i for i, symbol in enumerate(info.symbols)}
    table = numpy_helper.from_array(
        np.array([index.get(t, info.unk) for t in vocabulary], np.int64), "text.table")
    if tokenizer.kind == "sentencepiece":
        return _sentencepiece(tokenizer.model), [table, *_spm_defaults()]
    spec = json.loads(tokenizer.model)
    if tokenizer.kind == "gpt2":
        return _gpt2(spec), [table]
    return _wordpiece(spec, vocabulary), [table]


def _wordpiece(spec: dict, vocabulary: list[str]) -> list:
    """BERT's tokenizer (a `tokenizers` WordPiece with BertNormalizer and BertPreTokenizer) as
    onnxruntime-extensions' BertTokenizer, its [CLS] and [SEP] dropped."""
    from onnx import helper

    model, normalizer = spec.get("model") or {}, spec.get("normalizer") or {}
    wanted = {"model WordPiece": model.get("type") == "WordPiece",
              "normalizer BertNormalizer": normalizer.get("type") == "BertNormalizer"
              and normalizer.get("clean_text", True),
              "pre-tokenizer BertPreTokenizer": (spec.get("pre_tokenizer") or {}).get("type")
              == "BertPreTokenizer",
              "at most 100 characters a word": model.get("max_input_chars_per_word") == 100,
              "no newline in a token": not any("\n" in t for t in vocabulary)}
    missing = [what for what, ok in wanted.items() if not ok]
    if missing:
        raise ValueError("the model's tokenizer cannot be put in the graph (onnxruntime-"
                         "extensions reads BERT-style WordPiece, sentencepiece and GPT-2 BPE); "
                         f"it lacks: {', '.join(missing)}")
    lower = bool(normalizer.get("lowercase", True))
    accents = normalizer.get("strip_accents")
    return [
        helper.make_node(
            "BertTokenizer", ["text"], ["text.bert_ids", "text.bert_types", "text.bert_mask"],
            domain=CONTRIB, name="tokenizer", vocab_file="\n".join(vocabulary),
            do_lower_case=int(lower), strip_accents=int(lower if accents is None else accents),
            tokenize_chinese_chars=int(normalizer.get("handle_chinese_chars", True)),
            unk_token=model.get("unk_token", "[UNK]"),
            suffix_indicator=model.get("continuing_subword_prefix", "##")),
        helper.make_node("Slice", ["text.bert_ids", "text.one", "text.last", "text.zero"],
                         ["text.tokenizer_ids"]),
    ]


def _sentencepiece(model: bytes) -> list:
    """sentencepiece as onnxruntime-extensions' SentencepieceTokenizer (the same library)."""
    from onnx import TensorProto, helper

    return [
        helper.make_node(
            "SentencepieceTokenizer", ["text", "text.nbest_size", "text.alpha", "text.no",
                                       "text.no", "text.no"],
            ["text.pieces", "text.rows"], domain=CONTRIB, name="tokenizer", model=model),
        helper.make_node("Cast", ["text.pieces"], ["text.tokenizer_ids"], to=TensorProto.INT64),
    ]


def _spm_defaults() -> list:
    """SentencepieceTokenizer's other inputs: no sampling, no <s> / </s>, not reversed."""
    from onnx import numpy_helper

    return [numpy_helper.from_array(np.array([0], np.int64), "text.nbest_size"),
            numpy_helper.from_array(np.array([0.0], np.float32), "text.alpha"),
            numpy_helper.from_array(np.array([False]), "text.no")]


def _gpt2(spec: dict) -> list:
    """GPT-2's byte-level BPE (subword.gpt2_bpe) as onnxruntime-extensions' GPT2Tokenizer."""
    from onnx import helper

    model = spec.get("model") or {}
    if model.get("type") != "BPE" or (spec.get("pre_tokenizer") or {}).get("type") != "ByteLevel":
        raise ValueError("the model's GPT-2 tokenizer is not a byte-level BPE")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return [
        helper.make_node("GPT2Tokenizer", ["text"], ["text.gpt2_ids", "text.gpt2_mask"],
                         domain=CONTRIB, name="tokenizer",
                         vocab=json.dumps(model["vocab"], separators=(",", ":")),
                         merges="\n".join(merges), padding_length=-1),
        helper.make_node("Reshape", ["text.gpt2_ids", "text.last"], ["text.tokenizer_ids"]),
    ]
