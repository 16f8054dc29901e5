"""Labelled examples from a user's own files: TSV or CSV with a header row, or JSON lines.

Columns (keys, for JSON lines) are chosen by name: the text, optionally the second text of a
pair, and the label (a class name, or a real-valued target with `regression`). A row that
cannot be read is an error that names the file, the line and the column; so is a class label
fairseq could not read back as one class (`checks.check_label`). Files are decoded with
`--encoding` (`textfile.read_text`).
"""

import csv
import io
import json
import math
import zlib
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Optional

from .checks import check_label
from .textfile import DEFAULT_ENCODING, read_text

FORMATS = ("tsv", "csv", "jsonl")


class Example(NamedTuple):
    text: str
    pair: Optional[str]  # the second text of a sentence pair, None for single texts
    label: str  # class name, or the target as written (`regression`)
    where: str = ""  # "file:line" of its row, for messages ("" for a bundled set)


class Columns(NamedTuple):
    text: str = "text"
    pair: Optional[str] = None
    label: str = "label"


def format_of(path: Path, fmt: Optional[str] = None) -> str:
    """The file's format: fmt if given, else from its suffix (.tsv, .csv, .jsonl/.json)."""
    fmt = fmt or {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}.get(
        path.suffix.lower())
    if fmt not in FORMATS:
        raise ValueError(f"{path}: cannot tell its format from the name; pass --format "
                         f"({', '.join(FORMATS)})")
    return fmt


def records(path: Path, fmt: str, encoding: str = DEFAULT_ENCODING,
            text: Optional[str] = None) -> Iterator[tuple[int, dict]]:
    """(line number, {column: value}) for every data row of the file (text: its content, if
    already read); a CSV row whose quoted field spans lines is numbered by its first line."""
    if text is None:
        text = read_text(path, encoding)
    if fmt == "jsonl":
        for number, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not a JSON object ({e.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {line[:80]!r}")
            yield number, record
        return
    reader = csv.reader(io.StringIO(text, newline=""),
                        **({"delimiter": "\t", "quoting": csv.QUOTE_NONE} if fmt == "tsv" else {}))
    header = next(reader, None)
    if header is None:
        raise ValueError(f"{path}: the file is empty (a header row naming the columns comes first)")
    while True:
        first = reader.line_num + 1
        row = next(reader, None)
        if row is None:
            return
        if not row:
            continue
        if len(row) != len(header):
            raise ValueError(f"{path}:{first}: {len(row)} columns where the header "
                             f"has {len(header)} ({', '.join(header)})")
        yield first, dict(zip(header, row))


def read_examples(path: Path, columns: Columns, regression: bool = False,
                  fmt: Optional[str] = None, encoding: str = DEFAULT_ENCODING) -> list[Example]:
    """Every example of one file. regression: labels must be finite numbers (kept as
    written); else class labels, one word each (`checks.check_label`)."""
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    fmt = format_of(path, fmt)
    wanted = [c for c in columns if c is not None]
    examples = []
    for number, record in records(path, fmt, encoding):
        where = f"{path}:{number}"
        values = {column: field(record, column, where) for column in wanted}
        if not values[columns.text] or (columns.pair and not values[columns.pair]):
            empty = columns.text if not values[columns.text] else columns.pair
            raise ValueError(f"{where}: column {empty!r} is empty")
        label = values[columns.label]
        if not label:
            raise ValueError(f"{where}: column {columns.label!r} is empty")
        if regression:
            check_target(label, where, columns.label)
        else:
            check_label(label, where, columns.label)
        examples.append(Example(values[columns.text],
                                values[columns.pair] if columns.pair else None, label, where))
    if not examples:
        raise ValueError(f"{path}: no examples")
    return examples


def field(record: dict, column: str, where: str) -> str:
    """The record's value of column as stripped text; an error naming where (file:line) if
    the column is missing, null (JSON) or not a text or number."""
    if column not in record:
        raise ValueError(f"{where}: no column {column!r} (the row has "
                         f"{', '.join(map(str, record)) or 'none'})")
    value = record[column]
    if value is None:
        raise ValueError(f"{where}: column {column!r} is null (it needs a value)")
    if isinstance(value, (dict, list)):
        raise ValueError(f"{where}: column {column!r} holds {type(value).__name__}, not text")
    return str(value).strip()


def check_target(label: str, where: str, column: str) -> None:
    """Stop at a regression target that is not a finite number (NaN or inf would make every
    loss after it NaN)."""
    try:
        value = float(label)
    except ValueError:
        raise ValueError(f"{where}: column {column!r} holds {label!r}, not a number (a "
                         "regression target)") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: column {column!r} holds {label!r}: a regression target "
                         "must be a finite number")


def whole_text(example: Example) -> str:
    """An example's text, or both texts of a pair (split_deterministically's default key)."""
    return example.text if example.pair is None else f"{example.text}\t{example.pair}"


def split_deterministically(examples: list[Example],
                            key: Callable[[Example], str] = whole_text
                            ) -> dict[str, list[Example]]:
    """80 / 10 / 10 train / valid / test by a checksum of each example's key (default: its
    text(s)), so the split never depends on row order or a seed, and examples of one key share
    a split (a key of the first text alone keeps every pair with one question together)."""
    splits = {"train": [], "valid": [], "test": []}
    for example in examples:
        bucket = zlib.crc32(key(example).encode("utf-8")) % 10
        splits["test" if bucket == 0 else "valid" if bucket == 1 else "train"].append(example)
    return splits
