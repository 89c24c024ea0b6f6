"""The claims ledger (docs/claims.md): every sentence of the labs, README and docs that says what a paper or its
authors report links a row of the ledger; every row names a source a reader can check; the ledger's "used in"
column is current. The scanner is shown failing on a claim without a link."""

import importlib.util
import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("claims_scan", ROOT / "scripts" / "claims.py")
claims = importlib.util.module_from_spec(_spec)
sys.modules["claims_scan"] = claims
_spec.loader.exec_module(claims)

ROWS = claims.ledger_rows()


def test_every_claim_sentence_links_its_ledger_row():
    hits = [h for p in claims.course_files() for h in claims.unlinked_claims(p)]
    assert not hits, ("sentences that say what a paper or its authors report, with no docs/claims.md link "
                      "(python scripts/claims.py lists them):\n" + "\n".join(map(str, hits[:40])))


def test_every_link_points_to_a_row_and_every_row_is_used():
    used = claims.links()
    assert not sorted(set(used) - set(ROWS)), "links to rows that do not exist"
    assert not sorted(set(ROWS) - set(used)), "ledger rows the course never links (remove them, or link them)"


def test_the_used_in_column_is_current():
    assert claims.update_used_in() == claims.LEDGER.read_text(), "run `make claims` to refresh the 'used in' column"


@pytest.mark.parametrize("rid", sorted(ROWS))
def test_each_row_names_a_checkable_source(rid):
    cells = [c.strip() for c in re.split(r"(?<!\\)\|", ROWS[rid])[1:-1]]
    assert len(cells) == 4, f"{rid}: a row has four cells (id, claim, source, used in)"
    claim, source = cells[1], cells[2]
    assert claim and source, f"{rid}: empty claim or source"
    if rid.startswith("E"):  # the paper: its place and its own words
        assert re.search(r"§\d|Table \d|App\. [A-J]|Abstract|Title page|Figure \d", source), f"{rid}: no section or table"
        assert '"' in source, f"{rid}: quote the paper's words"
    elif rid.startswith("A"):  # the authors' code: a file at a commit
        assert re.search(r"`[\w./-]+\.(py|md|yaml)` at `[0-9a-f]{40}`", source), f"{rid}: a file at a full commit id"
    elif rid.startswith("K"):
        assert re.search(r"Abstract|arXiv listing", source), f"{rid}: the EchoKV listing or abstract"
    else:
        assert rid.startswith("R"), f"{rid}: unknown kind"


def test_the_scanner_fails_on_a_claim_without_a_link(tmp_path):
    md = tmp_path / "page.md"
    text = ("Our model recalls at every gap. The paper reports 100% at 50M parameters.\n\n"
            "- In the paper SKA is best on all six tasks ([E26](claims.md#E26)).\n\n"
            "| a | the abstract says so |\n")
    hits = claims.unlinked_claims(md, text)
    assert [h.text for h in hits] == ["The paper reports 100% at 50M parameters.", "| a | the abstract says so |"]
    lab = tmp_path / "99_lab.py"
    src = ("# %% [markdown]\n# The paper's K is 2 ([E21](../docs/claims.md#E21)).\n# Its authors' code pins K = 1.\n\n"
           "# %%\nprint('the paper reports 65% at 4096')\n\n"
           "# %%\n# paper: Table 2 ([E27](../docs/claims.md#E27))\nprint('paper:', 65.1)\n")
    hits = claims.unlinked_claims(lab, src)
    assert [(h.line, h.text[:12]) for h in hits] == [(2, "Its authors'"), (6, "print('the p")], hits
