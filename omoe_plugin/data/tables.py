"""Labelled examples from a user's own files: TSV or CSV with a header row, or JSON lines.

Columns (keys, for JSON lines) are chosen by name: the text, optionally the second text of a
pair, and the label (a class name, or a real-valued target with `regression`). A row that
cannot be read is an error that names the file, the line and the column.
"""

import csv
import io
import json
import zlib
from pathlib import Path
from typing import Callable, NamedTuple, Optional

FORMATS = ("tsv", "csv", "jsonl")


class Example(NamedTuple):
    text: str
    pair: Optional[str]  # the second text of a sentence pair, None for single texts
    label: str  # class name, or the target as written (`regression`)


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


def records(path: Path, fmt: str):
    """(line number, {column: value}) for every data row of the file."""
    text = path.read_text(encoding="utf-8-sig")
    if fmt == "jsonl":
        for number, line in enumerate(text.splitlines(), 1):
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
    for row in reader:
        if not row:
            continue
        if len(row) != len(header):
            raise ValueError(f"{path}:{reader.line_num}: {len(row)} columns where the header "
                             f"has {len(header)} ({', '.join(header)})")
        yield reader.line_num, dict(zip(header, row))


def read_examples(path: Path, columns: Columns, regression: bool = False,
                  fmt: Optional[str] = None) -> list[Example]:
    """Every example of one file. regression: labels must be numbers (kept as written)."""
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    fmt = format_of(path, fmt)
    wanted = [c for c in columns if c is not None]
    examples = []
    for number, record in records(path, fmt):
        values = {}
        for column in wanted:
            value = record.get(column)
            if value is None:
                raise ValueError(f"{path}:{number}: no column {column!r} (the row has "
                                 f"{', '.join(map(str, record)) or 'none'})")
            if isinstance(value, (dict, list)):
                raise ValueError(f"{path}:{number}: column {column!r} holds "
                                 f"{type(value).__name__}, not text")
            values[column] = str(value).strip()
        if not values[columns.text] or (columns.pair and not values[columns.pair]):
            empty = columns.text if not values[columns.text] else columns.pair
            raise ValueError(f"{path}:{number}: column {empty!r} is empty")
        label = values[columns.label]
        if regression:
            try:
                float(label)
            except ValueError:
                raise ValueError(f"{path}:{number}: column {columns.label!r} holds {label!r}, "
                                 "not a number (a regression target)") from None
        elif not label:
            raise ValueError(f"{path}:{number}: column {columns.label!r} is empty")
        examples.append(Example(values[columns.text],
                                values[columns.pair] if columns.pair else None, label))
    if not examples:
        raise ValueError(f"{path}: no examples")
    return examples


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
