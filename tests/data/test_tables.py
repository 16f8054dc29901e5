"""Reading rows of TSV, CSV and JSON lines: a null value is named as null (not as a missing
column), a row whose quoted field spans lines is numbered by its first line, and a regression
target must be a finite number."""

import re

import pytest

from omoe_plugin.data.tables import Columns, read_examples


@pytest.mark.parametrize("row, message", [
    ('{"text": null, "label": "pos"}', "rows.jsonl:2: column 'text' is null"),
    ('{"text": "fine", "label": null}', "rows.jsonl:2: column 'label' is null"),
    ('{"words": "fine", "label": "pos"}', "rows.jsonl:2: no column 'text' (the row has words, "
                                          "label)"),
])
def test_a_null_value_is_not_a_missing_column(tmp_path, row, message):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "a fine film", "label": "pos"}\n' + row + "\n")
    with pytest.raises(ValueError, match=re.escape(message)):
        read_examples(path, Columns())


def test_a_quoted_field_over_lines_is_one_row_numbered_by_its_first_line(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text('text,label\n"A fine\nfilm, really",pos\n"Dull",neg,extra\n')
    with pytest.raises(ValueError, match=r"rows.csv:4: 3 columns where the header has 2"):
        read_examples(path, Columns())
    path.write_text('text,label\n"A fine\nfilm, really",pos\nDull,neg\n')
    assert [(e.text, e.where) for e in read_examples(path, Columns())] == [
        ("A fine\nfilm, really", f"{path}:2"), ("Dull", f"{path}:4")]


@pytest.mark.parametrize("target", ["nan", "inf", "-Infinity"])
def test_a_regression_target_must_be_finite(tmp_path, target):
    path = tmp_path / "rows.tsv"
    path.write_text(f"text\tlabel\nfine\t1.5\nodd\t{target}\n")
    with pytest.raises(ValueError, match=f"rows.tsv:3: column 'label' holds '{target}': a "
                                         "regression target must be a finite number"):
        read_examples(path, Columns(), regression=True)
