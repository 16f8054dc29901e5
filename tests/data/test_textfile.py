"""Data files as text: a byte the encoding cannot decode is named by file, line and column in
every input format, `--encoding` reads such a file, and a field's line breaks become spaces."""

import json

import pytest

from omoe_plugin.data.cli import cli_main
from omoe_plugin.data.conll import read_conll
from omoe_plugin.data.squad import read_squad
from omoe_plugin.data.tables import Columns, read_examples
from omoe_plugin.data.textfile import one_line
from tests.cli import exits_with

CONTEXT = "Le café de Flore est à Paris."
ANSWER = {"text": "Paris", "answer_start": CONTEXT.index("Paris")}
# per format: (file name, a file whose second line holds "café" at column 10, --format)
FILES = {
    "tsv": ("rows.tsv", "text\tlabel\nA fine café\tpos\n", []),
    "csv": ("rows.csv", 'text,label\n"A fine café",pos\n', []),
    "jsonl": ("rows.jsonl", '{"text": "A fine film", "label": "pos"}\n{"text": "café", '
              '"label": "pos"}\n', []),
    "conll": ("rows.txt", "Paris NNP B-NP B-LOC\nLe___café NN I-NP O\n", ["--format", "conll"]),
    "squad": ("rows.jsonl", json.dumps({"question": "Where?", "context": CONTEXT,
                                        "answers": [ANSWER]}) + "\n" +
              json.dumps({"question": "Which café?", "context": CONTEXT, "answers": [ANSWER]},
                         ensure_ascii=False) + "\n", ["--format", "squad"]),
}


@pytest.mark.parametrize("fmt", FILES)
def test_a_latin1_byte_is_named_by_file_line_and_column(tmp_path, fmt):
    name, text, options = FILES[fmt]
    path = tmp_path / name
    path.write_bytes(text.encode("latin-1"))
    line = text.split("\n")[1]
    column = line.index("é") + 1
    out = tmp_path / "bin"
    message = exits_with(cli_main, [str(out), *options, *[a for s in ("train", "valid", "test")
                                                         for a in (f"--{s}", str(path))]])
    assert message == (f"omoe-prepare-data: {path}:2:{column}: not valid UTF-8 (byte 0xe9); "
                       "pass --encoding latin-1 if the file is Latin-1")
    assert not out.exists()


def test_encoding_reads_every_format(tmp_path):
    for fmt, (name, text, _) in FILES.items():
        path = tmp_path / fmt / name
        path.parent.mkdir()
        path.write_bytes(text.encode("latin-1"))
        if fmt == "conll":
            words = [w for s in read_conll(path, encoding="latin-1") for w in s.words]
        elif fmt == "squad":
            words = [q.question for q in read_squad(path, encoding="latin-1")]
        else:
            words = [e.text for e in read_examples(path, Columns(), encoding="latin-1")]
        assert any("café" in w for w in words), fmt


def test_an_unknown_encoding_is_refused_by_name(tmp_path, capsys):
    exits_with(cli_main, [str(tmp_path / "bin"), "--input", "x.tsv", "--encoding", "klingon"])
    assert "unknown encoding 'klingon'" in capsys.readouterr().err


def test_line_breaks_in_a_field_become_spaces():
    assert one_line("A fine\r\nfilm,\n\nreally\u2028good") == "A fine film, really good"
