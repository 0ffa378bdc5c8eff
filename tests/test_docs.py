"""The reference lives in the repository: the code and the README cite docs/ pages that exist, by sections that
exist, and nothing points outside the repository (``../shared``) or at a page without its docs/ path."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
# the package's sources (each folder installs as part of mmchar) and the user's guide
PACKAGE = ("mmchar", "kernels", "workloads", "analysis", "dashboards")
TEXT = {".py", ".md", ".json", ".toml", ".txt", ".sh", ".html", ".js", ".css"}
# code that may cite docs too (its citations must resolve; its wording is its owners' business)
OTHER_CODE = ("tests", "benchmarks")

# a page of the shared reference named without the path it has in this repository
MOVED = {"conventions.md": "docs/", "integration.md": "docs/", "wersa.md": "docs/kernels/"}
BARE = re.compile(r"(?<![\w.-])((?:[\w.-]+/)*)(conventions|integration|wersa)\.md")
CITED = re.compile(r"(?<![\w.-])docs/([\w./-]+\.md)")
# `docs/x.md, "Section"` (and `"Section" and "Other"`), possibly across a line break and a comment's `#`
SECTIONS = re.compile(r'(?<![\w.-])docs/([\w./-]+\.md),[\s#]*"([^"\n]+)"((?:[\s#]*(?:and|,)[\s#]*"[^"\n]+")*)')


def _files(folders: tuple[str, ...]) -> list[Path]:
    out = []
    for folder in folders:
        for p in sorted((REPO / folder).rglob("*")):
            if (p.is_file() and p.suffix in TEXT and "__pycache__" not in p.parts and p != Path(__file__).resolve()
                    and "results" not in p.relative_to(REPO).parts):  # this file's examples are not citations
                out.append(p)
    return out


def _sources() -> list[Path]:
    return _files(PACKAGE) + [REPO / "README.md"]


def _where(path: Path, text: str, pos: int) -> str:
    return f"{path.relative_to(REPO)}:{text.count(chr(10), 0, pos) + 1}"


def _headings(page: Path) -> list[str]:
    """A page's section names: its headings, and the terms its lists define in bold (``- **Shares** — ...``)."""
    names = []
    for line in page.read_text().splitlines():
        if m := re.match(r"#+\s+(.*)", line):
            names.append(m.group(1).strip())
        elif m := re.match(r"\s*-\s+\*\*([^*]+)\*\*", line):
            names.append(m.group(1).strip())
    return names


def _has_section(page: Path, section: str) -> bool:
    want = section.strip().lower()
    return any(h.lower().startswith(want) for h in _headings(page))


def test_sources_point_inside_the_repository():
    """No `../shared` path and no page of the old shared reference without its docs/ path."""
    bad = []
    for path in _sources():
        text = path.read_text(errors="replace")
        for m in re.finditer(r"\.\./shared", text):
            bad.append(f"{_where(path, text, m.start())}: ../shared")
        for m in BARE.finditer(text):
            page = f"{m.group(2)}.md"
            if m.group(1) != MOVED[page]:
                bad.append(f"{_where(path, text, m.start())}: {m.group(0)} (write {MOVED[page]}{page})")
    assert not bad, "references outside docs/:\n" + "\n".join(bad)


def _citations(pattern: re.Pattern[str]):
    """(where, match) of every citation ``pattern`` finds in the code that may cite docs/."""
    for path in _sources() + _files(OTHER_CODE):
        text = path.read_text(errors="replace")
        for m in pattern.finditer(text):
            yield _where(path, text, m.start()), m


def test_cited_pages_exist():
    missing = [f"{where}: docs/{m.group(1)}" for where, m in _citations(CITED) if not (DOCS / m.group(1)).is_file()]
    assert not missing, "cited pages that do not exist:\n" + "\n".join(missing)


def test_cited_sections_exist():
    missing = []
    for where, m in _citations(SECTIONS):
        page = DOCS / m.group(1)
        if not page.is_file():
            continue  # test_cited_pages_exist reports it
        for section in [m.group(2)] + re.findall(r'"([^"\n]+)"', m.group(3) or ""):
            if not _has_section(page, section):
                missing.append(f'{where}: docs/{m.group(1)}, "{section}"')
    assert not missing, "cited sections that do not exist:\n" + "\n".join(missing)


def test_the_checks_see_what_they_look_for(tmp_path):
    """The patterns themselves: a bare page, a cited page with two sections, a heading matched by its start."""
    assert [m.group(0) for m in BARE.finditer("see conventions.md and docs/kernels/wersa.md, not x/wersa.md")] == \
        ["conventions.md", "docs/kernels/wersa.md", "x/wersa.md"]
    m = SECTIONS.search('(docs/conventions.md, "Vocabulary" and "Run store")')
    assert m.group(1) == "conventions.md" and m.group(2) == "Vocabulary" and '"Run store"' in m.group(3)
    m = SECTIONS.search('# self-attention ... (docs/kernels/wersa.md,\n        # "Inputs")')
    assert m.group(2) == "Inputs"
    page = tmp_path / "p.md"
    page.write_text("# Title\n## Measurement passes (one run)\n- **Shares** — a share is ...\n")
    assert _has_section(page, "Measurement passes") and _has_section(page, "Shares")
    assert not _has_section(page, "Run store")
