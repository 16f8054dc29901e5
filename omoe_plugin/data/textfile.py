"""Reading a user's data files (TSV, CSV, JSON lines, CoNLL, SQuAD) as text, and writing fields
back one to a line.

Every input file is decoded with `omoe-prepare-data --encoding` (default UTF-8, a leading
byte-order mark dropped); a byte the encoding cannot decode is reported by file, line and column
(`train.tsv:3:17: not valid UTF-8 (byte 0xe9); pass --encoding latin-1 if the file is Latin-1`)
instead of Python's `'utf-8' codec can't decode byte 0xe9 in position 792`. A field may hold
line breaks (a quoted CSV field, a JSON string with `\\n`): the raw files keep one example a
line, so `one_line` turns them into spaces.
"""

import codecs
import re
from pathlib import Path

DEFAULT_ENCODING = "utf-8"
# every character str.splitlines() breaks at: a raw file written with one would gain a line
LINE_BREAKS = re.compile(r"[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]+")


def encoding_name(name: str) -> str:
    """The codec's canonical name (`latin-1` -> `iso8859-1`); ValueError for an unknown one."""
    try:
        return codecs.lookup(name).name
    except LookupError:
        raise ValueError(f"unknown encoding {name!r} (e.g. utf-8, latin-1, cp1252)") from None


def read_text(path: Path, encoding: str = DEFAULT_ENCODING) -> str:
    """The file's text, decoded with encoding (UTF-8: a byte-order mark dropped), line ends
    read as Python's text mode reads them (\\r\\n and \\r become \\n). An undecodable byte is a
    ValueError naming the file, line and column (see the module doc)."""
    data = path.read_bytes()
    codec = encoding_name(encoding)
    try:
        text = data.decode("utf-8-sig" if codec == "utf-8" else codec)
    except UnicodeDecodeError as e:
        raise ValueError(undecodable(path, data, e, codec)) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def undecodable(path: Path, data: bytes, error: UnicodeDecodeError, codec: str) -> str:
    """`FILE:LINE:COLUMN: not valid ENCODING (byte 0xNN)` and what to do, for a decode error
    at byte error.start of data (the column counts characters, as editors do)."""
    start = error.start
    line_start = max(data.rfind(b"\n", 0, start), data.rfind(b"\r", 0, start)) + 1
    before = data[:start]
    line = before.count(b"\n") + before.count(b"\r") - before.count(b"\r\n") + 1
    column = len(data[line_start:start].decode(codec, errors="replace")) + 1
    name = "UTF-8" if codec == "utf-8" else codec
    hint = ("pass --encoding latin-1 if the file is Latin-1" if codec == "utf-8" else
            "pass the encoding the file was written in as --encoding")
    return f"{path}:{line}:{column}: not valid {name} (byte 0x{data[start]:02x}); {hint}"


def one_line(text: str) -> str:
    """text with each run of line breaks replaced by a space (see the module doc)."""
    return LINE_BREAKS.sub(" ", text)
