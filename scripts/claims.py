"""The claims ledger's checker: every sentence of the course that says what a paper or its authors report
links its row in ``docs/claims.md``.

    python scripts/claims.py            # list the sentences that need a ledger link and have none; exit 1 if any
    python scripts/claims.py --update   # rewrite the ledger's "used in" column from the links found

A *claim sentence* mentions the papers, their abstracts or their authors ("the paper", "the paper's", "the
abstract", "the authors", "Sridhar", "Wang et al.", ...). It passes when it carries a link to a ledger row
(``claims.md#E12``); every linked row must exist. Units are read the way a reader meets them: Markdown
paragraphs, list items and table rows split into sentences (headings and fenced code skipped); in a lab's
percent-format source, markdown cells likewise, and in code cells each comment block or line (a link on a
line within two lines of a code line counts, so a printed sentence can carry its link in a comment beside it).

``tests/test_claims.py`` runs this on the course and on a sentence without a link, to show it fails.
"""

from __future__ import annotations

import pathlib
import re
import sys
from dataclasses import dataclass

ROOT = pathlib.Path(__file__).resolve().parents[1]
LEDGER = ROOT / "docs" / "claims.md"

# What the course reads as a statement about the papers or their authors.
TRIGGER = re.compile(
    r"\b(?:the|this|that|their|its|Echo|EchoKV|Echo's|EchoKV's|SKA)\s+(?:paper|papers|abstract|preprint)\b"
    r"|\bpapers?'s?\b(?<=paper's)|\bpapers'"
    r"|\b(?:the|Echo|EchoKV|Echo's|their)\s+authors\b|\bauthors'"
    r"|\bSridhar\b|\bJohansen\b|\bWang et al\b"
    r"|\b(?:paper|abstract|authors)\s+(?:reports?|says|states|claims|writes|gives|uses|finds|shows)\b"
    r"|\bpaper\s*[(:]|\bpaper\s+(?:table|numbers?|values?|rows?)\b|\bin the paper\b"
    r"|\bKoopman_Mamba\b|\bTable\s+\d\b|\bApp(?:endix|\.)\s+[A-J]\b|\u00a7\s*\d",
    re.IGNORECASE)
LINK = re.compile(r"claims\.md#([A-Z]\d+)")
ROW_ID = re.compile(r'<a id="([A-Z]\d+)"></a>')
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\[(*_`\"'])")


@dataclass(frozen=True)
class Hit:
    path: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.text[:200]}"


def course_files(root: pathlib.Path = ROOT) -> list[pathlib.Path]:
    """The labs' sources, the README, the docs (the ledger itself excepted) and the SKA notation README."""
    files = sorted((root / "notebooks").glob("[0-9][0-9]_*.py"))
    files += [root / "README.md", root / "echo_tutor" / "ska" / "README.md"]
    files += sorted(p for p in (root / "docs").rglob("*.md") if p.resolve() != (root / "docs" / "claims.md").resolve())
    return [p for p in files if p.exists()]


def _markdown_units(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """(first line number, text) of each paragraph, list item and table row; headings and fenced code skipped."""
    units: list[tuple[int, list[str]]] = []
    fenced = False
    for n, raw in lines:
        s = raw.strip()
        if s.startswith("```"):
            fenced = not fenced
            units.append((n, []))
            continue
        if fenced:
            continue
        if not s or s.startswith("#") or s.startswith("<!--"):
            units.append((n, []))
            continue
        new = s.startswith("|") or re.match(r"^([-*+]|\d+\.)\s", s) or not units or not units[-1][1]
        if new:
            units.append((n, [s]))
        else:
            units[-1][1].append(s)
    return [(n, " ".join(parts)) for n, parts in units if parts]


def _notebook_units(text: str) -> list[tuple[int, str]]:
    """Units of a percent-format lab: markdown cells as Markdown, code cells by comment block or line."""
    units: list[tuple[int, str]] = []
    cell: list[tuple[int, str]] = []
    markdown = False

    def flush() -> None:
        if markdown:
            units.extend(_markdown_units([(n, re.sub(r"^# ?", "", s)) for n, s in cell]))
        else:
            code = [(n, s) for n, s in cell]
            i = 0
            while i < len(code):
                n, s = code[i]
                if s.lstrip().startswith("#"):
                    block = []
                    while i < len(code) and code[i][1].lstrip().startswith("#"):
                        block.append(code[i][1].lstrip()[1:].strip())
                        i += 1
                    units.append((n, " ".join(block)))
                    continue
                near = " ".join(t for m, t in code[max(0, i - 2): i + 3])
                units.append((n, s.strip() + ("" if not LINK.search(near) else f" [{LINK.search(near).group(0)}]")))
                i += 1

    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("# %%"):
            flush()
            cell, markdown = [], "[markdown]" in line
            continue
        cell.append((n, line))
    flush()
    return units


def unlinked_claims(path: pathlib.Path, text: str | None = None) -> list[Hit]:
    """The claim sentences of one file that carry no ledger link."""
    text = path.read_text() if text is None else text
    numbered = list(enumerate(text.splitlines(), 1))
    units = _notebook_units(text) if path.suffix == ".py" else _markdown_units(numbered)
    rel = str(path.relative_to(ROOT)) if path.is_absolute() and ROOT in path.parents else str(path)
    hits = []
    for n, unit in units:
        for sentence in SENTENCE_END.split(unit):
            if TRIGGER.search(sentence) and not LINK.search(sentence):
                hits.append(Hit(rel, n, sentence.strip()))
    return hits


def ledger_rows(ledger: pathlib.Path = LEDGER) -> dict[str, str]:
    """Row id -> the row's Markdown line."""
    rows = {}
    for line in ledger.read_text().splitlines():
        m = ROW_ID.search(line)
        if m:
            rows[m.group(1)] = line
    return rows


def links(files: list[pathlib.Path] | None = None) -> dict[str, set[str]]:
    """Row id -> the course files that link it."""
    found: dict[str, set[str]] = {}
    for p in course_files() if files is None else files:
        for rid in LINK.findall(p.read_text()):
            found.setdefault(rid, set()).add(str(p.relative_to(ROOT)))
    return found


def _where(paths: set[str]) -> str:
    short = []
    for p in sorted(paths):
        m = re.match(r"notebooks/(\d\d)_", p)
        short.append(f"lab {m.group(1)}" if m else p.removeprefix("docs/"))
    return ", ".join(short)


def update_used_in(ledger: pathlib.Path = LEDGER) -> str:
    """The ledger's text with each row's last column ("used in") set from the links the course holds."""
    used = links()
    out = []
    for line in ledger.read_text().splitlines():
        m = ROW_ID.search(line)
        if m and line.rstrip().endswith("|"):
            head, _, _ = line.rstrip()[:-1].rpartition(" | ")  # the last cell is "used in"
            line = f"{head} | {_where(used.get(m.group(1), set())) or '(not linked yet)'} |"
        out.append(line)
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    if "--update" in argv:
        LEDGER.write_text(update_used_in())
        print(f"updated the 'used in' column of {LEDGER.relative_to(ROOT)}")
        return 0
    hits = [h for p in course_files() for h in unlinked_claims(p)]
    rows = ledger_rows()
    dangling = sorted({rid for rid in links() if rid not in rows})
    for h in hits:
        print(h)
    for rid in dangling:
        print(f"link to a row that does not exist: claims.md#{rid}")
    print(f"{len(hits)} claim sentence(s) without a ledger link; {len(dangling)} dangling link(s)")
    return 1 if hits or dangling else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
