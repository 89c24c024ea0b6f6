"""docs/architecture.md is true to the tree: every room (package) and top-level module of ``echo_tutor`` is on
the page, every module of a room is named in its row, and the imports follow the table's "imports" column
(measured on the source with ``ast``, imports inside functions included). ``echo_kernels`` sits above the
package: ``echo_tutor`` never imports it by name (``backends.triton_op`` resolves a fast path)."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "echo_tutor"
DOC = (ROOT / "docs" / "architecture.md").read_text()
ALWAYS = {"errors", "_checks"}   # cross-cutting: any room may import them (the column's header says so)


def _rows() -> dict[str, tuple[str, set[str]]]:
    """``{room: (what it holds, {rooms it may import})}`` from the table "The rooms"."""
    rows = {}
    for line in DOC.splitlines():
        m = re.match(r"\| `echo_tutor/(\w+)/` \| (.*) \|([^|]*)\|$", line)
        if m:
            rows[m[1]] = (m[2], set(re.findall(r"`(\w+)`", m[3])))
    return rows


def _imports(path: pathlib.Path, source: str | None = None) -> set[tuple[str, ...]]:
    """The ``echo_tutor`` modules (as dotted parts below the package) and ``("echo_kernels",)`` that the
    module at ``path`` (its text: ``source``, else the file) imports, anywhere in it."""
    rel = path.relative_to(PKG).with_suffix("").parts
    out: set[tuple[str, ...]] = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "echo_kernels":
                    out.add(("echo_kernels",))
                elif parts[0] == "echo_tutor" and len(parts) > 1:
                    out.add(tuple(parts[1:]))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                here = rel[:-1]                       # the module's package (an __init__'s is its own folder)
                base = list(here[: len(here) - (node.level - 1)])
            elif node.module and node.module.split(".")[0] == "echo_kernels":
                out.add(("echo_kernels",))
                continue
            elif node.module and node.module.split(".")[0] == "echo_tutor":
                base = []
                node_module = node.module.split(".")[1:]
                out.update({tuple(node_module)} if node_module else {(a.name,) for a in node.names})
                continue
            else:
                continue
            mod = [p for p in (node.module or "").split(".") if p]
            full = base + mod
            out.update({tuple(full)} if full else {(a.name,) for a in node.names})
    return out


def _room(parts: tuple[str, ...]) -> str:
    return parts[0]


PACKAGES = sorted(p.name for p in PKG.iterdir() if (p / "__init__.py").exists())
MODULES = sorted(p.stem for p in PKG.glob("*.py") if p.name != "__init__.py")


def test_every_room_and_top_level_module_is_on_the_page():
    rows = _rows()
    assert set(PACKAGES) == set(rows), f"rooms in the tree but not in the table: {sorted(set(PACKAGES) - set(rows))}; " \
                                       f"rows without a room: {sorted(set(rows) - set(PACKAGES))}"
    missing = [m for m in MODULES if not re.search(rf"`(echo_tutor/)?{m}\.py`", DOC)]
    assert not missing, f"top-level modules docs/architecture.md does not name: {missing}"
    assert "`kernels/echo_kernels/`" in DOC


@pytest.mark.parametrize("room", PACKAGES)
def test_every_module_of_a_room_is_named_in_its_row(room):
    what, _ = _rows()[room]
    mods = sorted(p.stem for p in (PKG / room).glob("*.py") if p.stem not in ("__init__", "__main__"))
    # lab modules are named by their pattern (labNN.py, labNN_<topic>.py)
    mods = [m for m in mods if not re.fullmatch(r"lab\d\d(_\w+)?", m)]
    unnamed = [m for m in mods if f"`{m}.py`" not in what and f"`{m}`" not in what]
    assert not unnamed, f"echo_tutor/{room}/: modules its row in docs/architecture.md does not name: {unnamed}"


@pytest.mark.parametrize("room", PACKAGES + MODULES)
def test_imports_follow_the_table(room):
    rows = _rows()
    files = sorted((PKG / room).rglob("*.py")) if (PKG / room).is_dir() else [PKG / f"{room}.py"]
    allowed = (rows[room][1] if room in rows else set()) | ALWAYS | {room}
    if room == "_checks":
        allowed = {"errors", "_checks"}
    if room == "errors":
        allowed = {"errors"}
    wrong = sorted({(f.relative_to(ROOT).as_posix(), ".".join(parts)) for f in files for parts in _imports(f)
                    if _room(parts) not in allowed and parts != ("echo_kernels",)})
    assert not wrong, f"{room} imports what docs/architecture.md does not list for it: {wrong}"
    kernels = sorted(f.relative_to(ROOT).as_posix() for f in files if ("echo_kernels",) in _imports(f))
    assert not kernels, f"echo_tutor imports echo_kernels by name in {kernels} (use backends.triton_op)"


def test_the_table_is_a_layering():
    """No two rooms import each other, directly or through others: the table is an order."""
    rows = _rows()
    graph = {room: deps - ALWAYS - {room} for room, (_, deps) in rows.items()}

    def reach(a, seen):
        for b in graph.get(a, ()):
            if b not in seen:
                seen.add(b)
                reach(b, seen)
        return seen

    cycles = sorted(a for a in graph if a in reach(a, set()))
    assert not cycles, f"rooms on a cycle of the table's imports: {cycles}"


def test_the_reader_sees_every_kind_of_import():
    """Relative, absolute and function-level imports are all seen (else the table test could not fail)."""
    src = ("from ..models import HybridLM\nfrom . import dmd\nfrom .. import ska\ndef f():\n"
           "    import echo_tutor.train.loop\n    from echo_kernels import ska\n")
    got = _imports(PKG / "tasks" / "probe.py", src)
    assert got == {("models",), ("tasks",), ("ska",), ("train", "loop"), ("echo_kernels",)}
    got = _imports(PKG / "tasks" / "__init__.py", "from .probe import x\n")
    assert got == {("tasks", "probe")}


def test_recipes_and_configs_use_the_glossarys_names():
    """"Names, one per concept": no recipe of the registry, nor TrainConfig, has a field the glossary's "not"
    column retires, and every ``seeds`` field is a tuple of seeds (a count is ``len(seeds)``)."""
    import dataclasses

    from echo_tutor.experiments.registry import RECIPES
    from echo_tutor.train import TrainConfig

    retired = {"examples", "seconds", "minutes", "budget", "n_seeds", "K", "power", "order", "n_eval", "window_layers"}
    assert "Names, one per concept" in DOC
    classes = {type(r) for r in RECIPES.values()} | {TrainConfig}
    for cls in classes:
        names = {f.name for f in dataclasses.fields(cls)}
        assert not names & retired, f"{cls.__name__} has retired field name(s) {sorted(names & retired)}"
    for name, recipe in RECIPES.items():
        seeds = getattr(recipe, "seeds", ())
        assert isinstance(seeds, tuple) and all(isinstance(s, int) for s in seeds), f"{name}: seeds {seeds!r}"
        if "echokv" in name:
            assert not hasattr(recipe, "window"), f"{name}: EchoKV's layer neighbourhood is layer_window"
