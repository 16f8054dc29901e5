"""Sub-word tokenizers for data preparation and serving: WordPiece (a `tokenizers` JSON file
or a BERT `vocab.txt`), sentencepiece (a model file, or one trained on the training split)
and GPT-2's byte-level BPE as fairseq's RoBERTa uses it (`encoder.json` + `vocab.bpe`; its
tokens are the BPE ids written as text, which fairseq's RoBERTa `dict.txt` lists).

A tokenizer is saved beside the binarised data (`tokenizer.json`, `spm.model` or
`gpt2_bpe.json` in the data directory), and `omoe-export` embeds that same file in the
ONNX model, so serving tokenises exactly as the data was tokenised.
"""

import base64
import io
import json
from pathlib import Path
from typing import Iterable, Optional

from tokenizers import Tokenizer

KINDS = ("tokenizers", "sentencepiece", "gpt2")
FILES = {"tokenizers": "tokenizer.json", "sentencepiece": "spm.model", "gpt2": "gpt2_bpe.json"}


class SubwordTokenizer:
    """Text -> sub-word tokens, no special tokens, no truncation (fairseq adds <s>/</s>).

    kind: "tokenizers" (a `tokenizers` JSON: WordPiece, BPE, ...), "sentencepiece", or
    "gpt2" (a `tokenizers` JSON of GPT-2's BPE whose tokens are its ids as text);
    model: the JSON text, or the sentencepiece model's bytes."""

    def __init__(self, kind: str, model: str | bytes) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown tokenizer kind {kind!r}: choose one of {', '.join(KINDS)}")
        self.kind, self.model = kind, model
        if kind != "sentencepiece":
            self._tokenizer = Tokenizer.from_str(model)
            self._tokenizer.no_truncation()
            self._tokenizer.no_padding()
        else:
            import sentencepiece

            self._spm = sentencepiece.SentencePieceProcessor(model_proto=model)

    @property
    def unknown(self) -> Optional[str]:
        """The token the tokenizer emits for what it cannot represent (None if it has none)."""
        if self.kind == "sentencepiece":
            return self._spm.id_to_piece(self._spm.unk_id())
        if self.kind == "gpt2":
            return None  # bytes: every text has its tokens
        return getattr(self._tokenizer.model, "unk_token", None)

    def tokenize(self, texts: list[str]) -> list[list[str]]:
        if self.kind == "sentencepiece":  # by id: a character it lacks becomes its <unk>
            return [[self._spm.id_to_piece(i) for i in ids] for ids in self._spm.encode(texts)]
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=False)
        if self.kind == "gpt2":  # fairseq writes GPT-2's BPE ids as its tokens
            return [[str(i) for i in e.ids] for e in encodings]
        return [e.tokens for e in encodings]

    def tokenize_with_offsets(self, text: str) -> tuple[list[str], list[tuple[int, int]]]:
        """One text's tokens (as `tokenize` gives them) and the character span [start, end)
        of the text each token stands for (extractive QA maps answers through them)."""
        if self.kind == "sentencepiece":  # spans in bytes of the UTF-8 text: to characters
            pieces = self._spm.encode(text, return_type="proto").pieces
            char = [i for i, c in enumerate(text) for _ in c.encode("utf-8")] + [len(text)]
            return ([self._spm.id_to_piece(p.id) for p in pieces],
                    [(char[p.begin], char[p.end]) for p in pieces])
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        tokens = [str(i) for i in encoding.ids] if self.kind == "gpt2" else encoding.tokens
        return tokens, [tuple(span) for span in encoding.offsets]

    def vocabulary(self) -> list[str]:
        """Every token the tokenizer can emit, in its own id order."""
        if self.kind == "sentencepiece":
            return [self._spm.id_to_piece(i) for i in range(self._spm.get_piece_size())]
        if self.kind == "gpt2":
            return [str(i) for i in range(self._tokenizer.get_vocab_size())]
        vocab = self._tokenizer.get_vocab(with_added_tokens=False)
        return sorted(vocab, key=vocab.get)

    def save(self, directory: Path) -> Path:
        """Write the tokenizer into directory under its kind's file name; returns the path."""
        path = directory / FILES[self.kind]
        if self.kind == "sentencepiece":
            path.write_bytes(self.model)
        else:
            path.write_text(self.model, encoding="utf-8")
        return path

    def to_text(self) -> str:
        """The model as one string (sentencepiece's bytes in base64), for ONNX metadata."""
        return base64.b64encode(self.model).decode() if self.kind == "sentencepiece" else self.model

    @classmethod
    def from_text(cls, kind: str, text: str) -> "SubwordTokenizer":
        return cls(kind, base64.b64decode(text) if kind == "sentencepiece" else text)


def from_file(path: Path) -> SubwordTokenizer:
    """A `tokenizers` JSON file, a BERT `vocab.txt` (uncased WordPiece, as BERT's own
    tokenizer: lower-cased, accents stripped), a sentencepiece `.model` file, or the GPT-2
    BPE file omoe-prepare-data saves (`gpt2_bpe.json`, whose tokens are ids)."""
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} does not exist")
    data = path.read_bytes()
    if path.name == FILES["gpt2"]:
        return SubwordTokenizer("gpt2", data.decode("utf-8"))
    if path.suffix == ".json":
        try:
            return SubwordTokenizer("tokenizers", data.decode("utf-8"))
        except Exception as e:  # noqa: BLE001 - tokenizers raises untyped errors
            raise ValueError(f"{path} is not a tokenizers JSON file: {e}") from None
    if path.suffix == ".txt":
        from tokenizers.implementations import BertWordPieceTokenizer

        wordpiece = BertWordPieceTokenizer(str(path), lowercase=True)
        return SubwordTokenizer("tokenizers", wordpiece._tokenizer.to_str())
    try:
        return SubwordTokenizer("sentencepiece", data)
    except RuntimeError as e:
        raise ValueError(
            f"{path} is not a sentencepiece model ({e}); a tokenizer file is a tokenizers "
            "JSON (.json), a BERT vocab.txt (.txt) or a sentencepiece model (.model)"
        ) from None


def gpt2_bpe(encoder_json: Path, vocab_bpe: Path) -> SubwordTokenizer:
    """GPT-2's byte-level BPE from fairseq's files (`encoder.json`: token -> id; `vocab.bpe`:
    a header line, then one merge per line), tokenising exactly as fairseq's `--bpe gpt2`."""
    from tokenizers import models, pre_tokenizers

    for path in (encoder_json, vocab_bpe):
        if not path.is_file():
            raise FileNotFoundError(f"GPT-2 BPE file {path} does not exist")
    try:
        vocab = json.loads(encoder_json.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{encoder_json} is not GPT-2's encoder.json: {e}") from None
    lines = vocab_bpe.read_text(encoding="utf-8").split("\n")[1:-1]  # as fairseq reads it
    merges = [tuple(line.split()) for line in lines]
    if any(len(m) != 2 for m in merges):
        raise ValueError(f"{vocab_bpe} is not GPT-2's vocab.bpe (a header, then one pair a line)")
    bpe = Tokenizer(models.BPE(vocab, merges))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's regex
    return SubwordTokenizer("gpt2", bpe.to_str())


def saved_in(directory: Path) -> Optional[SubwordTokenizer]:
    """The tokenizer omoe-prepare-data saved in a data directory, or None."""
    for name in FILES.values():
        if (directory / name).is_file():
            return from_file(directory / name)
    return None


def train_sentencepiece(texts: Iterable[str], vocab_size: int) -> SubwordTokenizer:
    """A unigram sentencepiece model trained on texts (the training split), with exactly
    vocab_size pieces (sentencepiece's error says so if the texts cannot support that many)."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
        model_type="unigram", character_coverage=1.0, num_threads=1,
        minloglevel=2,  # warnings and errors only
    )
    return SubwordTokenizer("sentencepiece", model.getvalue())
