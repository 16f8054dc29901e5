"""What inference needs besides the graph, stored in the ONNX file's metadata_props.

One self-contained `.onnx` file carries the tokenizer the data was tokenised with (a
`tokenizers` JSON, or a sentencepiece model in base64), the fairseq dictionary that turns
its tokens into the model's ids, the label names, the special ids, whether the model reads
sentence pairs, and the longest input the position embeddings allow, so a serving machine
needs no fairseq, no checkpoint and no data directory.
"""

import dataclasses
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

PREFIX = "omoe."
FORMAT_VERSION = 1


@dataclass
class ServingInfo:
    labels: list[str]  # class names in output order; [] for a regression head
    symbols: list[str]  # the fairseq dictionary, in id order
    tokenizer: str  # text -> tokens (no special tokens, no truncation): see tokenizer_kind
    max_positions: int  # longest input, <s> and </s> included
    bos: int
    eos: int
    pad: int
    unk: int
    moe_layers: list[int]  # encoder layers whose FFN is an MoE
    experts: int
    top_k: int
    tokenizer_kind: str = "tokenizers"  # "tokenizers" JSON, or "sentencepiece" (base64)
    pairs: bool = False  # fine-tuned on sentence pairs: <s> A </s> [separator] B </s>
    separator: Optional[int] = None  # the task's --separator-token between a pair's texts
    tagging: bool = False  # a per-token head: logits [batch, seq, tags], labels = the tags
    span_qa: bool = False  # extractive QA: per-token start and end logits [batch, seq, 2]
    max_answer_tokens: int = 30  # span_qa: the longest answer, in sub-words, as in training
    optimization_level: str = "all"  # ONNX Runtime graph optimisation level of sessions
    source: str = ""  # the checkpoint this was exported from

    @property
    def regression(self) -> bool:
        return not self.labels

    @property
    def kind(self) -> str:
        """What the model answers: "sentences" (classes or a value per sentence or pair),
        "tagging" (a tag per word) or "span_qa" (an answer span per question and context)."""
        return "tagging" if self.tagging else "span_qa" if self.span_qa else "sentences"

    @classmethod
    def read(cls, path: Path) -> "ServingInfo":
        """The ServingInfo of an ONNX file, read without loading its graph."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no model at {path}")
        try:
            props = read_metadata(path)
        except ValueError as e:
            raise ValueError(f"{path} is not a loadable ONNX model (truncated?): {e}") from None
        return cls.from_metadata(props, path)

    def to_metadata(self) -> dict[str, str]:
        """metadata_props entries (string -> string)."""
        props = {"format_version": str(FORMAT_VERSION)}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            props[field.name] = value if isinstance(value, str) else json.dumps(value)
        return {PREFIX + k: v for k, v in props.items()}

    @classmethod
    def from_metadata(cls, props: dict[str, str], path: Path) -> "ServingInfo":
        """Read back to_metadata's entries; a clear error for a model omoe-export did not write."""
        ours = {k[len(PREFIX):]: v for k, v in props.items() if k.startswith(PREFIX)}
        if ours.get("format_version") != str(FORMAT_VERSION):
            raise ValueError(
                f"{path} was not written by omoe-export (format {FORMAT_VERSION}): its "
                "metadata lacks the tokenizer, dictionary and labels; export the checkpoint "
                "with omoe-export"
            )
        values = {}
        for field in dataclasses.fields(cls):
            if field.name not in ours:
                if field.default is not dataclasses.MISSING:  # written before the field existed
                    continue
                raise ValueError(f"{path}: its metadata lacks {PREFIX}{field.name}; re-export it")
            raw = ours[field.name]
            values[field.name] = raw if field.type is str else json.loads(raw)
        return cls(**values)


def read_metadata(path: Path) -> dict[str, str]:
    """An ONNX file's metadata_props, read by walking the top level of its ModelProto and
    seeking past everything else (the graph and its weights), so that a model opens in one
    ONNX Runtime session at the optimisation level its metadata names. A file that is not a
    protobuf message raises ValueError."""
    props = {}
    with open(path, "rb") as f:
        for field, value in _fields(f, Path(path).stat().st_size, keep={14}):
            entry = dict(_fields(io.BytesIO(value), len(value), keep={1, 2}))
            props[entry.get(1, b"").decode("utf-8", "replace")] = \
                entry.get(2, b"").decode("utf-8", "replace")
    return props


def _fields(f, size: int, keep: set[int]) -> Iterator[tuple[int, bytes]]:
    """(field number, bytes) of the length-delimited fields in `keep` of one protobuf
    message of `size` bytes read from f; every other field is skipped."""
    while f.tell() < size:
        key = _varint(f)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _varint(f)
        elif wire in (1, 5):
            f.seek(8 if wire == 1 else 4, io.SEEK_CUR)
        elif wire == 2:
            length = _varint(f)
            if f.tell() + length > size:
                raise ValueError("not an ONNX model: a field runs past the end of the file")
            if number in keep:
                yield number, f.read(length)
            else:
                f.seek(length, io.SEEK_CUR)
        else:
            raise ValueError("not an ONNX model: unknown protobuf wire type")


def _varint(f) -> int:
    value, shift = 0, 0
    while True:
        byte = f.read(1)
        if not byte or shift > 63:
            raise ValueError("not an ONNX model: truncated protobuf varint")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
