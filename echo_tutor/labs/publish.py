"""Make a preview folder publishable: the repository's pages its links point to, rendered beside it.

A lab links the course's documents by their place in the repository (``../docs/claims.md#E24``, the glossary
in ``../docs/course.md``). Put on a web server, ``preview/`` alone would answer each of those with a 404. So
:func:`publish_links` follows every relative link of the rendered pages to a Markdown file of the repository,
renders that file to HTML at the same relative place inside the preview (``preview/docs/claims.html``), does the
same for the links of the pages it rendered, and rewrites every such link to the rendered page, anchors
kept (headings get GitHub's anchors too). A relative link to any other file of the repository (a lab's
source, a module) becomes plain text naming the file: the preview holds pages, not the code. The instructor's
pages (``docs/instructor/``: the answer key, the rubric) are never rendered into a preview.
"""

from __future__ import annotations

import html
import os
import pathlib
import re

__all__ = ["publish_links", "render_markdown", "github_anchor"]

_HREF = re.compile(r'href="([^"#:]*)(#[^"]*)?"')
_LINK = re.compile(r'<a href="([^"#:]*)(#[^"]*)?"([^>]*)>(.*?)</a>', re.S)
_HEADING = re.compile(r"<(h[1-6]) id=\"[^\"]*\">(.*?)<a class=\"anchor-link\"", re.S)


def github_anchor(title: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"<[^>]+>", "", html.unescape(title)).strip().lower()
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text))


def render_markdown(path: pathlib.Path) -> str:
    """One Markdown file of the repository as a standalone HTML page (tables, code, GitHub heading anchors)."""
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    body = markdown2html_mistune(path.read_text())
    body = _HEADING.sub(lambda m: f'<{m.group(1)} id="{github_anchor(m.group(2))}">{m.group(2)}<a class="anchor-link"',
                        body)
    return ("<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(path.name)}</title><style>body{{font-family:sans-serif;margin:2em auto;"
            "max-width:60em;line-height:1.45}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;"
            "padding:2px 6px;vertical-align:top}} code{{background:#f4f4f4}} pre{{background:#f4f4f4;padding:8px;"
            "overflow:auto}} .anchor-link{{display:none}}</style></head><body>\n" + body + "\n</body></html>\n")


def _rewrite(page: str, repo_dir: pathlib.Path, page_path: pathlib.Path, root: pathlib.Path, out_dir: pathlib.Path,
             queue: list[pathlib.Path]) -> str:
    """Links of one rendered page: to a rendered Markdown page (queued for rendering), or to plain text."""

    def one(m: re.Match) -> str:
        target, frag, attrs, text = m.group(1), m.group(2) or "", m.group(3), m.group(4)
        if not target:  # a link inside the page
            return m.group(0)
        repo_target = (repo_dir / target).resolve()
        try:
            rel = repo_target.relative_to(root)
        except ValueError:  # outside the repository
            return m.group(0)
        if rel.parts[:2] == ("docs", "instructor"):  # the answer key and rubric stay out of a published preview
            return f'<span title="for instructors, in the repository: {html.escape(str(rel))}">{text}</span>'
        if rel.suffix == ".md" and repo_target.exists():
            queue.append(repo_target)
            dest = out_dir / rel.with_suffix(".html")
            href = os.path.relpath(dest, page_path.parent).replace(os.sep, "/")
            return f'<a href="{href}{frag}"{attrs}>{text}</a>'
        lab_page = out_dir / f"{rel.stem}.html"
        if rel.parts[:1] == ("notebooks",) and lab_page.exists():  # another lab: its preview page
            href = os.path.relpath(lab_page, page_path.parent).replace(os.sep, "/")
            return f'<a href="{href}{frag}"{attrs}>{text}</a>'
        if (out_dir / rel).exists() or rel.suffix == ".html":  # a page of the preview itself
            return m.group(0)
        return f'<span title="in the repository: {html.escape(str(rel))}">{text}</span>'

    return _LINK.sub(one, page)


def publish_links(out_dir: pathlib.Path, pages: list[tuple[pathlib.Path, pathlib.Path]], root: pathlib.Path) -> list[str]:
    """Rewrite the links of ``pages`` (``(written page, the repository folder its links are relative to)``) and
    render, into ``out_dir``, every repository Markdown page they reach; returns the rendered pages' paths."""
    queue: list[pathlib.Path] = []
    for page_path, repo_dir in pages:
        page_path.write_text(_rewrite(page_path.read_text(), repo_dir, page_path, root, out_dir, queue))
    done: list[str] = []
    seen: set[pathlib.Path] = set()
    while queue:
        md = queue.pop()
        if md in seen:
            continue
        seen.add(md)
        rel = md.relative_to(root)
        dest = out_dir / rel.with_suffix(".html")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(_rewrite(render_markdown(md), md.parent, dest, root, out_dir, queue))
        done.append(str(rel))
    return sorted(done)
