"""The documentation: docs/options.md is what `python -m omoe_plugin.docs_options` generates from
the dataclasses (so it lists every OMoE setting), and every relative link in README.md and
docs/ points to a file that exists, and every anchor to one of its headings."""

import dataclasses
import re
from pathlib import Path

import pytest

from omoe_plugin import docs_options
from omoe_plugin.optim.settings import OMoESettings, option

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# link targets that another tool writes, with the script that writes them: such a target may
# be absent (nothing recorded yet) as long as its script still writes that path
WRITTEN_BY = {"docs/results/convergence.md": "scripts/compare_optimizers.py"}
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)


@pytest.fixture(scope="module")
def generated() -> str:
    return docs_options.render()


def test_options_reference_is_up_to_date(generated):
    current = docs_options.OUTPUT.read_text() if docs_options.OUTPUT.exists() else ""
    assert current == generated, (
        f"docs/options.md is stale: regenerate it with `.venv/bin/{docs_options.COMMAND}`")


def test_options_reference_lists_every_omoe_setting(generated):
    rows = {line.split("|")[1].strip(" `") for line in generated.splitlines()
            if line.startswith("| `--")}
    missing = [option(f.name) for f in dataclasses.fields(OMoESettings)
               if option(f.name) not in rows]
    assert not missing
    for extra in ("--omoe-betas", "--omoe-eps", "--weight-decay", "--moe-experts",
                  "--moe-aux-weight", "--moe-orthogonality-weight", "--omoe-similarity-tokens"):
        assert extra in rows


def test_check_mode_fails_on_a_stale_file(tmp_path, capsys):
    stale = tmp_path / "options.md"
    stale.write_text("# Options reference\n")
    assert docs_options.main(["--check", "--out", str(stale)]) == 1
    assert docs_options.COMMAND in capsys.readouterr().err
    assert docs_options.main(["--out", str(stale)]) == 0
    assert docs_options.main(["--check", "--out", str(stale)]) == 0


def relative_links(path: Path) -> list[str]:
    """The relative link targets of a markdown file (outside fenced code), anchors cut off."""
    return [target.split("#", 1)[0] for target in links(path)
            if not target.startswith("#")]  # an anchor in the same file: no file to find


def links(path: Path) -> list[str]:
    """The link targets of a markdown file outside fenced code, URLs left out."""
    text = FENCE.sub("", path.read_text())
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a markdown file's headings (lower case, punctuation dropped,
    spaces as hyphens, -1, -2, ... for repeats)."""
    found, seen = set(), {}
    for heading in re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", FENCE.sub("", path.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return found


def test_docs_exist():
    assert (ROOT / "docs").is_dir() and len(DOCS) > 1


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_points_to_an_existing_file(doc):
    broken = []
    for target in relative_links(doc):
        resolved = (doc.parent / target).resolve()
        if resolved.exists():
            continue
        name = resolved.relative_to(ROOT).as_posix() if resolved.is_relative_to(ROOT) else target
        writer = WRITTEN_BY.get(name)
        if writer is not None and name in (ROOT / writer).read_text():
            continue
        broken.append(target)
    assert not broken, f"{doc.relative_to(ROOT)} links to missing files: {broken}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_anchor_names_a_heading(doc):
    broken = []
    for target in links(doc):
        path, _, anchor = target.partition("#")
        linked = doc if not path else (doc.parent / path).resolve()
        if anchor and linked.suffix == ".md" and linked.exists() and anchor not in anchors(linked):
            broken.append(target)
    assert not broken, f"{doc.relative_to(ROOT)} links to headings that do not exist: {broken}"
