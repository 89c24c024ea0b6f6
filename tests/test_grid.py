"""echo_tutor.grid: spec hashes, cell records, resumable local and Ray grids."""

from __future__ import annotations

import collections
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import grid_cells  # tests/ is on sys.path (pytest's rootdir-relative import); Ray workers get it via PYTHONPATH
from echo_tutor.grid import RECORDS_FILE, GridError, GridOptions, failed, load_records, run_cell, run_grid, spec_hash

from conftest import worker_pythonpath


def _lines(out_dir) -> list[str]:
    return (pathlib.Path(out_dir) / RECORDS_FILE).read_text().splitlines()


def _strip(records: list[dict]) -> list[dict]:
    """Records without their wall time, for comparing runs."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


@pytest.fixture(autouse=True)
def _reset_cells():
    grid_cells.CALLS.clear()
    grid_cells.BROKEN.clear()
    yield
    grid_cells.CALLS.clear()
    grid_cells.BROKEN.clear()


# ---------------------------------------------------------------------------------------------------------
# spec_hash, run_cell, load_records
# ---------------------------------------------------------------------------------------------------------


def test_spec_hash_stable_and_distinct():
    a = {"preset": "echo", "gap": 64, "seed": 0, "lr": 3e-3, "dims": [1, 2]}
    b = dict(reversed(list(a.items())))
    assert spec_hash(a) == spec_hash(b)
    assert len(spec_hash(a)) == 16 and int(spec_hash(a), 16) >= 0
    assert spec_hash(a) == spec_hash(json.loads(json.dumps(a)))
    assert spec_hash({**a, "dims": (1, 2)}) == spec_hash(a)  # a tuple survives the JSON round trip as a list
    assert spec_hash({**a, "seed": 1}) != spec_hash(a)
    assert spec_hash({"gap": 64}) != spec_hash({"gap": "64"})
    assert spec_hash({}) != spec_hash({"x": None})
    for bad in ([("gap", 64)], "gap=64", None, 3):
        with pytest.raises(ValueError, match="spec must be a dict"):
            spec_hash(bad)
    with pytest.raises(ValueError, match="spec must be JSON-serialisable"):
        spec_hash({1: "a", "b": 2})


def test_run_cell_records_success_and_errors():
    spec = {"seed": 3}
    rec = run_cell(grid_cells.seed_cell, spec)
    assert set(rec) == {"spec", "spec_hash", "result", "error", "traceback", "seconds"}
    assert rec["spec"] == spec and rec["spec_hash"] == spec_hash(spec)
    assert rec["error"] is None and rec["traceback"] is None and rec["seconds"] >= 0
    assert rec["result"] == grid_cells.seed_cell(spec)

    bad = run_cell(grid_cells.seed_cell, {"seed": 0, "raise": "boom"})
    assert bad["result"] is None and bad["error"] == "RuntimeError: boom"
    assert "seed_cell" in bad["traceback"] and "RuntimeError: boom" in bad["traceback"]

    odd = run_cell(grid_cells.not_a_dict_cell, spec)
    assert odd["result"] is None and odd["error"] == "TypeError: fn must return a dict, got float"
    assert failed([rec, bad, odd]) == [bad, odd]

    with pytest.raises(ValueError, match="fn must be callable"):
        run_cell("seed_cell", spec)
    with pytest.raises(ValueError, match="spec must be a dict"):
        run_cell(grid_cells.seed_cell, [1])


def test_run_grid_validates_arguments(tmp_path):
    specs = [{"seed": 0}]
    cell = grid_cells.seed_cell
    cases = [
        (dict(specs={"seed": 0}), "specs must be a list"),
        (dict(specs=[{"seed": 0}, 3]), r"specs\[1\] must be a Cell or a dict"),
        (dict(specs=[{"seed": 0}, {"seed": 1}, {"seed": 0}]), r"specs\[2\] duplicates specs\[0\]"),
        (dict(specs=specs, options={"executor": "ray"}), "options must be a GridOptions"),
        (dict(specs=specs, describe="acc"), "describe must be callable"),
        (dict(specs=specs, fn=None), "fn must be callable"),
        (dict(specs=specs, out_dir=3), "out_dir must be a path"),
    ]
    for kwargs, match in cases:
        kwargs = {"fn": cell, "out_dir": tmp_path / "out", **kwargs}
        with pytest.raises(ValueError, match=match):
            run_grid(**kwargs, progress=False)
    assert not (tmp_path / "out" / RECORDS_FILE).exists()
    assert grid_cells.CALLS == []


@pytest.mark.parametrize("kwargs, match", [
    (dict(executor="slurm"), "executor must be one of"),
    (dict(cpus_per_cell=0), "cpus_per_cell"),
    (dict(gpus_per_cell=-1), "gpus_per_cell"),
    (dict(max_retries=-1), "max_retries"),
    (dict(max_retries=1.5), "max_retries"),
    (dict(address="auto"), "address is only used with executor='ray'"),
    (dict(executor="ray", address=3), "address must be None"),
])
def test_grid_options_validate_themselves(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GridOptions(**kwargs)


def test_load_records_missing_and_truncated(tmp_path):
    assert load_records(tmp_path / "nothing-here") == []
    specs = [{"x": x} for x in range(3)]
    run_grid(specs, grid_cells.flaky_cell, tmp_path, progress=False)
    path = tmp_path / RECORDS_FILE
    with path.open("a") as f:  # a kill in the middle of writing the next line
        f.write('{"spec": {"x": 9}, "spec_hash": "abc')
    assert [r["spec"] for r in load_records(tmp_path)] == specs
    grid_cells.CALLS.clear()
    records = run_grid(specs + [{"x": 9}], grid_cells.flaky_cell, tmp_path, progress=False)
    assert grid_cells.CALLS == [{"x": 9}]  # the half-written cell counts as not done
    assert [r["result"]["y"] for r in records] == [0, 1, 4, 81]
    assert len(_lines(tmp_path)) == 4 and all(json.loads(line) for line in _lines(tmp_path))


# ---------------------------------------------------------------------------------------------------------
# The local executor: records, resume, errors
# ---------------------------------------------------------------------------------------------------------


def test_local_grid_writes_lines_and_resumes(tmp_path):
    specs = [{"seed": s, "scale": c} for s in (2, 0, 1) for c in (1.0, 0.5)]
    seen = []
    records = run_grid(specs, grid_cells.seed_cell, tmp_path / "run", describe=lambda r: seen.append(r) or "ok")
    assert [r["spec"] for r in records] == specs  # spec order
    assert [r["result"] for r in records] == [grid_cells.seed_cell(s) for s in specs]
    assert failed(records) == [] and len(seen) == len(specs)
    lines = _lines(tmp_path / "run")
    assert len(lines) == len(specs)
    assert _strip([json.loads(line) for line in lines]) == _strip(records)
    assert load_records(tmp_path / "run") == records  # fresh records look like ones read back

    grid_cells.CALLS.clear()
    again = run_grid(specs, grid_cells.seed_cell, tmp_path / "run", progress=False)
    assert grid_cells.CALLS == []  # nothing ran
    assert again == records and _lines(tmp_path / "run") == lines

    # a bigger grid in the same out_dir only runs the new cells; the result is in spec order
    more = [{"seed": 7, "scale": 1.0}] + specs
    grown = run_grid(more, grid_cells.seed_cell, tmp_path / "run", progress=False)
    assert grid_cells.CALLS == [{"seed": 7, "scale": 1.0}]
    assert [r["spec"] for r in grown] == more and grown[1:] == records
    assert len(_lines(tmp_path / "run")) == len(specs) + 1


def test_failing_cell_is_recorded_and_retried_on_rerun(tmp_path):
    specs = [{"x": x} for x in range(5)]
    grid_cells.BROKEN.add(2)
    records = run_grid(specs, grid_cells.flaky_cell, tmp_path, progress=False)
    assert grid_cells.CALLS == specs  # the grid went on past the failure
    bad = failed(records)
    assert [r["spec"] for r in bad] == [{"x": 2}]
    assert bad[0]["error"] == "ValueError: cell x=2 is broken" and bad[0]["result"] is None
    assert "flaky_cell" in bad[0]["traceback"]
    assert [r["result"] and r["result"]["y"] for r in records] == [0, 1, None, 9, 16]

    grid_cells.BROKEN.clear()
    grid_cells.CALLS.clear()
    records = run_grid(specs, grid_cells.flaky_cell, tmp_path, progress=False)
    assert grid_cells.CALLS == [{"x": 2}]  # only the failed cell was rerun
    assert failed(records) == [] and [r["result"]["y"] for r in records] == [0, 1, 4, 9, 16]
    lines = [json.loads(line) for line in _lines(tmp_path)]
    assert len(lines) == 6 and lines[2]["error"] and lines[-1]["spec"] == {"x": 2} and not lines[-1]["error"]

    grid_cells.CALLS.clear()
    run_grid(specs, grid_cells.flaky_cell, tmp_path, progress=False)
    assert grid_cells.CALLS == []  # the latest record of x=2 is a success


def test_grid_error_lists_the_failed_cells(tmp_path):
    grid_cells.BROKEN.update({1, 3})
    records = run_grid([{"x": x} for x in range(4)], grid_cells.flaky_cell, tmp_path, progress=False)
    err = GridError(failed(records), len(records), tmp_path)
    assert isinstance(err, RuntimeError) and err.total == 4 and [r["spec"] for r in err.failed] == [{"x": 1}, {"x": 3}]
    assert str(err).splitlines() == [
        f"2 of 4 cells failed (records in {tmp_path / RECORDS_FILE}; rerun the same command to retry them):",
        '  {"x":1}: ValueError: cell x=1 is broken', '  {"x":3}: ValueError: cell x=3 is broken']
    assert str(GridError(failed(records)[:1], 4)).splitlines()[0] == "1 of 4 cells failed:"


def test_progress_without_tqdm_prints_lines(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # `from tqdm.auto import tqdm` raises ImportError
    grid_cells.BROKEN.add(1)
    run_grid([{"x": 0}, {"x": 1}, {"x": 2}], grid_cells.flaky_cell, tmp_path,
             describe=lambda r: f"y={r['result']['y']}")
    assert capsys.readouterr().out.splitlines() == [
        "grid: 0/3 cells done", "grid: 1/3 cells done [y=0]", "grid: 2/3 cells done [failed=1]",
        "grid: 3/3 cells done [y=4, failed=1]"]


# ---------------------------------------------------------------------------------------------------------
# The Ray executor
# ---------------------------------------------------------------------------------------------------------


def test_ray_without_ray_installed_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'echo_tutor\[cluster\]'"):
        run_grid([{"x": 1}], grid_cells.flaky_cell, tmp_path, GridOptions(executor="ray"), progress=False)
    assert grid_cells.CALLS == []


@pytest.mark.slow
def test_local_and_ray_give_the_same_records(tmp_path, ray_local):
    specs = [{"seed": 0}, {"seed": 1, "scale": 2.0}, {"seed": 0, "raise": "no luck"}, {"seed": 5}]
    local = run_grid(specs, grid_cells.seed_cell, tmp_path / "local", progress=False)
    remote = run_grid(specs, grid_cells.seed_cell, tmp_path / "ray", GridOptions(executor="ray"), progress=False)
    assert ray_local.is_initialized()  # run_grid leaves a Ray it did not start running
    assert _strip(remote) == _strip(local)
    assert [r["spec"] for r in failed(remote)] == [{"seed": 0, "raise": "no luck"}]
    assert failed(remote)[0]["error"] == "RuntimeError: no luck"
    assert sorted(_strip(load_records(tmp_path / "ray")), key=str) == sorted(_strip(local), key=str)
    assert grid_cells.CALLS == specs  # the Ray cells ran in the workers, not here

    # the same resume rules: only the failed cell runs again
    n = len(_lines(tmp_path / "ray"))
    again = run_grid(specs, grid_cells.seed_cell, tmp_path / "ray", GridOptions(executor="ray"), progress=False)
    assert _strip(again) == _strip(local) and len(_lines(tmp_path / "ray")) == n + 1


def _wait_gone(pgid: int, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_ray_grid_killed_and_resumed(tmp_path, ray_local):
    specs = [{"seed": s, "sleep": 0.8} for s in range(6)]
    out = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import grid_cells
        from echo_tutor.grid import GridOptions, run_grid
        run_grid({specs!r}, grid_cells.seed_cell, {str(out)!r}, GridOptions(executor="ray"), progress=False)
        """)
    env = dict(os.environ, PYTHONPATH=worker_pythonpath(), OMP_NUM_THREADS="1")
    log = (tmp_path / "grid.log").open("wb")  # a file, not a pipe: Ray's chatter must never block the process
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=tmp_path, start_new_session=True,
                            stdout=log, stderr=subprocess.STDOUT)
    records_file = out / RECORDS_FILE
    try:
        deadline = time.monotonic() + 75
        while not (records_file.exists() and records_file.read_text().count("\n") >= 1):
            assert proc.poll() is None, f"the grid process exited early:\n{(tmp_path / 'grid.log').read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no record within 75 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    finally:  # never leave the subprocess or its embedded Ray behind
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if not _wait_gone(proc.pid, 10):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()

    before = load_records(out)
    assert 1 <= len(before) < len(specs), f"{len(before)} cells recorded before the kill"
    assert failed(before) == []

    records = run_grid(specs, grid_cells.seed_cell, out, GridOptions(executor="ray"), progress=False)
    assert failed(records) == [] and [r["spec"] for r in records] == specs
    per_hash = collections.Counter(r["spec_hash"] for r in load_records(out))
    assert per_hash == {spec_hash(s): 1 for s in specs}  # every cell recorded exactly once: none rerun
    assert load_records(out)[: len(before)] == before

    reference = run_grid(specs, grid_cells.seed_cell, tmp_path / "uninterrupted", progress=False)
    assert _strip(records) == _strip(reference)



# ------------------------------------------------------------------------------------------- typed cells
def test_typed_cells_reach_fn_as_themselves_and_record_their_spec(tmp_path):
    grid_cells.CALLS.clear()
    cells = [grid_cells.ToyCell(0), grid_cells.ToyCell(1, scale=2.0, sizes=(3,))]
    assert cells[1].sizes == [3]  # a tuple is kept as the list JSON reads back
    recs = run_grid(cells, grid_cells.toy_cell, tmp_path, progress=False)
    assert [r["spec"] for r in recs] == [{"experiment": "toy", "seed": 0, "scale": 1.0, "sizes": [4]},
                                         {"experiment": "toy", "seed": 1, "scale": 2.0, "sizes": [3]}]
    assert [r["spec_hash"] for r in recs] == [c.key for c in cells]
    assert grid_cells.ToyCell.from_spec(recs[1]["spec"]) == cells[1]
    n = len(grid_cells.CALLS)
    run_grid(cells, grid_cells.toy_cell, tmp_path, progress=False)
    assert len(grid_cells.CALLS) == n  # resumed: nothing ran again


def test_an_older_record_of_a_typed_cell_still_counts(tmp_path):
    """A record written before the field ``scale`` existed (its spec lacks it) is the record of the cell with
    the default scale: a rerun does not repeat it; a cell with another scale runs."""
    grid_cells.CALLS.clear()
    old = run_grid([{"experiment": "toy", "seed": 3, "sizes": [4]}], lambda s: {"y": -1.0}, tmp_path, progress=False)
    assert old[0]["spec_hash"] != grid_cells.ToyCell(3).key
    recs = run_grid([grid_cells.ToyCell(3), grid_cells.ToyCell(3, scale=0.5)], grid_cells.toy_cell, tmp_path,
                    progress=False)
    assert recs[0]["result"] == {"y": -1.0}  # the old record
    assert len(grid_cells.CALLS) == 1 and grid_cells.CALLS[0]["scale"] == 0.5


def test_typed_cells_refuse_what_json_cannot_keep():
    with pytest.raises(ValueError, match="ToyCell.sizes"):
        grid_cells.ToyCell(0, sizes=[object()])
    with pytest.raises(ValueError, match="does not have"):
        grid_cells.ToyCell.from_spec({"experiment": "toy", "seed": 0, "sede": 1})
    with pytest.raises(ValueError, match="is not a 'toy' cell"):
        grid_cells.ToyCell.from_spec({"experiment": "cliff", "seed": 0})


def test_a_record_from_before_cells_were_typed_reads_as_the_one_cell_type(tmp_path):
    """A spec that names no experiment (an untyped grid's) maps to the grid's cell type when it has only one."""
    old = {"seed": 4, "sizes": [4]}  # no "experiment", no "scale" (its default)
    run_grid([old], lambda s: {"y": -2.0}, tmp_path, progress=False)
    grid_cells.CALLS.clear()
    recs = run_grid([grid_cells.ToyCell(4)], grid_cells.toy_cell, tmp_path, progress=False)
    assert recs[0]["result"] == {"y": -2.0} and grid_cells.CALLS == []
