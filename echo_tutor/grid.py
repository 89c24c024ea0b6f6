"""Run a grid of experiment cells, locally or on Ray, with resumable JSONL records.

An experiment is a list of *cells*; each cell is a plain-dict *spec* (``{"preset": "echo", "gap": 64,
"seed": 0}``). One function ``fn(spec) -> dict`` runs one cell; :func:`run_cell` wraps it into one
*record*::

    {"spec": {...}, "spec_hash": "3f2a...", "result": {...}, "error": None, "traceback": None,
     "seconds": 12.3}

:func:`run_grid` runs the cells that are not done yet, either one after the other in this process
(``executor="local"``) or as Ray tasks (``executor="ray"``). Both paths call the same :func:`run_cell`, so
they give the same records for the same specs (up to ``"seconds"``). Each record is appended to
``<out_dir>/records.jsonl`` as soon as its cell finishes (one JSON line, flushed and fsync'ed, written by
this process only), so a grid that is killed can be rerun with the same ``out_dir``: cells already recorded
without an error are skipped, cells recorded with an error are run again. A cell that raises is recorded
with its error and the grid goes on; :func:`failed` lists those records afterwards.

There is no scheduler, queue or retry logic here beyond what Ray does: Ray places the tasks
(``cpus_per_cell``, ``gpus_per_cell``) and reruns a task whose worker died (``max_retries``).

Example::

    from echo_tutor.grid import failed, run_grid

    def cell(spec):                      # module level, so that Ray workers can import it
        ...
        return {"acc": acc}

    specs = [{"gap": g, "seed": s} for g in (0, 64, 256) for s in range(3)]
    records = run_grid(specs, cell, "runs/gap-sweep", executor="ray", address="auto")
    for r in failed(records):
        print(r["spec"], r["error"])

The Ray executor needs the ``cluster`` extra: ``pip install 'echo_tutor[cluster]'``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import time
import traceback
from typing import Any, Callable, Iterable, Sequence

from ._checks import check_choice, check_int, check_positive

__all__ = ["RECORDS_FILE", "GridError", "spec_hash", "run_cell", "load_records", "run_grid", "failed"]

RECORDS_FILE = "records.jsonl"
EXECUTORS = ("local", "ray")
_TRACEBACK_FRAMES = 6  # the innermost frames kept in a record's "traceback"
_TRACEBACK_CHARS = 4000

CellFn = Callable[[dict], dict]


# ---------------------------------------------------------------------------------------------------------
# One cell
# ---------------------------------------------------------------------------------------------------------


def spec_hash(spec: dict) -> str:
    """A stable 16-hex-digit hash of a cell spec.

    The sha1 of ``json.dumps(spec, sort_keys=True, default=str)``: independent of key order, and the same
    for a spec and its JSON round trip (tuples and lists hash alike), so a spec read back from
    ``records.jsonl`` has the hash it was recorded under.
    """
    if not isinstance(spec, dict):
        raise ValueError(f"spec must be a dict, got {type(spec).__name__}")
    try:
        text = json.dumps(spec, sort_keys=True, default=str)
    except (TypeError, ValueError) as exc:  # e.g. keys of mixed types, circular references
        raise ValueError(f"spec must be JSON-serialisable with string keys: {exc}") from None
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def run_cell(fn: CellFn, spec: dict) -> dict:
    """Run one cell: call ``fn(spec)`` and return its record.

    The record is ``{"spec", "spec_hash", "result", "error", "traceback", "seconds"}``: on success
    ``result`` is the dict ``fn`` returned and ``error`` / ``traceback`` are ``None``; if ``fn`` raises (an
    ``Exception``) or returns something other than a dict, ``result`` is ``None``, ``error`` is
    ``"ExcType: message"`` and ``traceback`` holds the innermost frames. ``seconds`` is the wall time of
    the call. Raises ``ValueError`` only for a bad ``fn`` or ``spec``, never for a failing cell.
    """
    if not callable(fn):
        raise ValueError(f"fn must be callable, got {type(fn).__name__}")
    key = spec_hash(spec)
    t0 = time.perf_counter()
    result: Any = None
    error: str | None = None
    tb: str | None = None
    try:
        result = fn(spec)
        if not isinstance(result, dict):
            error = f"TypeError: fn must return a dict, got {type(result).__name__}"
            result = None
    except Exception as exc:  # noqa: BLE001 - a failing cell is recorded, the grid goes on
        error = _describe_exception(exc)
        tb = "".join(traceback.format_exception(exc, limit=-_TRACEBACK_FRAMES))[-_TRACEBACK_CHARS:]
    return {"spec": spec, "spec_hash": key, "result": result, "error": error, "traceback": tb,
            "seconds": time.perf_counter() - t0}


def failed(records: Iterable[dict]) -> list[dict]:
    """The records whose cell failed (``record["error"]`` set), in the order given."""
    return [r for r in records if r.get("error")]


class GridError(RuntimeError):
    """Some cells of a grid failed: raised by the experiment drivers after they wrote what the other cells
    gave.

    ``failed``: the failed cells' records; ``total``: the number of cells in the grid; ``out_dir``: where
    ``records.jsonl`` is. ``str(err)`` is one header line, then one line per failed cell: its spec (as
    compact JSON) and its error.
    """

    def __init__(self, failed_records: Sequence[dict], total: int, out_dir: str | os.PathLike | None = None):
        self.failed, self.total, self.out_dir = list(failed_records), total, out_dir
        where = f" (records in {_records_path(out_dir)}; rerun the same command to retry them)" if out_dir else ""
        lines = [f"{len(self.failed)} of {total} cells failed{where}:"]
        for r in self.failed:
            spec = json.dumps(r.get("spec"), sort_keys=True, separators=(",", ":"), default=str)
            lines.append(f"  {spec}: {r.get('error')}")
        super().__init__("\n".join(lines))


def _describe_exception(exc: BaseException) -> str:
    message = str(exc).strip()
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _error_record(spec: dict, exc: BaseException, seconds: float | None) -> dict:
    """A record for a cell whose task failed outside ``fn`` (e.g. its Ray worker died)."""
    return {"spec": spec, "spec_hash": spec_hash(spec), "result": None, "error": _describe_exception(exc),
            "traceback": "".join(traceback.format_exception(exc, limit=-_TRACEBACK_FRAMES))[-_TRACEBACK_CHARS:],
            "seconds": seconds}


# ---------------------------------------------------------------------------------------------------------
# The records file
# ---------------------------------------------------------------------------------------------------------


def _records_path(out_dir: str | os.PathLike) -> pathlib.Path:
    if not isinstance(out_dir, (str, os.PathLike)):
        raise ValueError(f"out_dir must be a path (str or os.PathLike), got {type(out_dir).__name__}")
    return pathlib.Path(out_dir) / RECORDS_FILE


def load_records(out_dir: str | os.PathLike) -> list[dict]:
    """All records in ``<out_dir>/records.jsonl``, in file order (a cell that was rerun appears more than
    once; the later record is the current one). A missing file gives ``[]``; an incomplete last line (the
    process was killed while writing it) is skipped."""
    path = _records_path(out_dir)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                continue  # truncated by a kill mid-write: that cell simply has no record yet
            raise ValueError(f"{path}: line {i + 1} is not valid JSON; the records file is corrupt") from None
        if not isinstance(rec, dict) or "spec_hash" not in rec:
            raise ValueError(f"{path}: line {i + 1} is not a grid record")
        records.append(rec)
    return records


def _latest(records: Iterable[dict]) -> dict[str, dict]:
    """The latest record per spec hash."""
    return {r["spec_hash"]: r for r in records}


def _drop_incomplete_line(path: pathlib.Path) -> None:
    """Cut an incomplete last line (no trailing newline: a kill mid-write) so the next append starts on a
    fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    with path.open("r+b") as f:
        f.truncate(data.rfind(b"\n") + 1)
        f.flush()
        os.fsync(f.fileno())


def _append(path: pathlib.Path, record: dict) -> dict:
    """Append ``record`` as one JSON line (flushed and fsync'ed); return it as read back from JSON, so that
    a fresh record looks exactly like one loaded by a later run."""
    line = json.dumps(record, default=str)
    with path.open("a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
    return json.loads(line)


# ---------------------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------------------


class _Progress:
    """"cells done/total" with tqdm (``tqdm.auto``) if it is installed, printed lines otherwise."""

    def __init__(self, total: int, done: int, enabled: bool, describe: Callable[[dict], Any] | None):
        self.total, self.done, self.n_failed = total, done, 0
        self.enabled, self.describe = enabled, describe
        self.bar = None
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            print(f"grid: {done}/{total} cells done", flush=True)
            return
        self.bar = tqdm(total=total, initial=done, desc="cells", unit="cell")

    def update(self, record: dict) -> None:
        self.done += 1
        if not self.enabled:
            return
        if record.get("error"):
            self.n_failed += 1
            postfix = ""
        elif self.describe is not None:
            postfix = self.describe(record)
        else:
            postfix = ""
        if self.n_failed:
            postfix = f"{postfix}, failed={self.n_failed}" if postfix else f"failed={self.n_failed}"
        if self.bar is None:
            print(f"grid: {self.done}/{self.total} cells done" + (f" [{postfix}]" if postfix else ""), flush=True)
            return
        if isinstance(postfix, dict):
            self.bar.set_postfix(postfix, refresh=False)
        elif postfix:
            self.bar.set_postfix_str(str(postfix), refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------------------------------------
# The grid
# ---------------------------------------------------------------------------------------------------------


def run_grid(
    specs: Sequence[dict],
    fn: CellFn,
    out_dir: str | os.PathLike,
    executor: str = "local",
    *,
    address: str | None = None,
    cpus_per_cell: float = 1.0,
    gpus_per_cell: float = 0.0,
    max_retries: int = 2,
    progress: bool = True,
    describe: Callable[[dict], Any] | None = None,
) -> list[dict]:
    """Run every cell of ``specs`` that is not recorded yet in ``out_dir``; return the records of all cells.

    Args:
        specs: the cells, a list of distinct plain dicts (JSON-serialisable).
        fn: ``fn(spec) -> dict`` runs one cell. For ``executor="ray"`` it must be a module-level function
            of a module the Ray workers can import (a package module, or a module on their ``PYTHONPATH``);
            functions defined in the driver script itself are shipped by value and work too.
        out_dir: the directory of ``records.jsonl`` (created if needed). Rerunning with the same
            ``out_dir`` skips the cells recorded without an error and reruns the failed ones (their new
            record is appended; the latest record of a cell is the one that counts).
        executor: ``"local"`` runs the cells one after the other in this process; ``"ray"`` submits them
            all as Ray tasks and records each one as it finishes.
        address: Ray only. ``None`` starts an embedded Ray on this machine (shut down at the end) unless
            Ray is already initialised in this process (then that instance is used and left running);
            ``"auto"`` or ``"HOST:PORT"`` joins an existing cluster (never shut down here).
        cpus_per_cell, gpus_per_cell: Ray only: the resources each cell's task reserves (``> 0``, ``>= 0``).
        max_retries: Ray only: how often Ray reruns a cell whose worker process died (not when ``fn``
            raises: that is recorded as an error).
        progress: show "cells done/total" (tqdm if installed, printed lines otherwise).
        describe: ``describe(record)`` gives the progress postfix (a str or a dict) after each successful
            cell, e.g. ``lambda r: f"acc={r['result']['acc']:.3f}"``.

    Returns:
        One record per spec, in the order of ``specs`` (see :func:`run_cell`); records read back from
        ``records.jsonl`` and fresh ones look alike (JSON round trip). Failed cells are returned like the
        others: check them with :func:`failed`.
    """
    check_choice("executor", executor, EXECUTORS)
    if not isinstance(specs, (list, tuple)):
        raise ValueError(f"specs must be a list of dicts, got {type(specs).__name__}")
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict):
            raise ValueError(f"specs[{i}] must be a dict, got {type(spec).__name__}")
    if not callable(fn):
        raise ValueError(f"fn must be callable, got {type(fn).__name__}")
    if describe is not None and not callable(describe):
        raise ValueError(f"describe must be callable or None, got {type(describe).__name__}")
    if address is not None and not isinstance(address, str):
        raise ValueError(f"address must be None, 'auto' or 'HOST:PORT', got {address!r}")
    if address is not None and executor != "ray":
        raise ValueError(f"address is only used with executor='ray', got executor={executor!r}")
    cpus_per_cell = check_positive("cpus_per_cell", cpus_per_cell)
    if isinstance(gpus_per_cell, bool) or not isinstance(gpus_per_cell, (int, float)) or not gpus_per_cell >= 0:
        raise ValueError(f"gpus_per_cell must be a number >= 0, got {gpus_per_cell!r}")
    check_int("max_retries", max_retries, min_value=0)

    hashes = [spec_hash(spec) for spec in specs]
    first: dict[str, int] = {}
    for i, key in enumerate(hashes):
        if key in first:
            raise ValueError(f"specs[{i}] duplicates specs[{first[key]}]: {specs[i]!r}")
        first[key] = i

    path = _records_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    _drop_incomplete_line(path)
    latest = _latest(load_records(out_dir))
    todo = [i for i, key in enumerate(hashes) if key not in latest or latest[key].get("error")]

    bar = _Progress(len(specs), len(specs) - len(todo), bool(progress), describe)
    try:
        if todo and executor == "local":
            for i in todo:
                record = _append(path, run_cell(fn, specs[i]))
                latest[record["spec_hash"]] = record
                bar.update(record)
        elif todo:
            _run_ray(specs, todo, fn, path, latest, bar, address=address, cpus_per_cell=cpus_per_cell,
                     gpus_per_cell=float(gpus_per_cell), max_retries=max_retries)
    finally:
        bar.close()
    return [latest[key] for key in hashes]


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ImportError("executor='ray' needs Ray: pip install 'echo_tutor[cluster]'") from None
    return ray


def _local_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _run_ray(specs: Sequence[dict], todo: list[int], fn: CellFn, path: pathlib.Path, latest: dict[str, dict],
             bar: _Progress, *, address: str | None, cpus_per_cell: float, gpus_per_cell: float,
             max_retries: int) -> None:
    """Submit the cells ``todo`` as Ray tasks; append each record as its task finishes (driver only)."""
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        joins = address is not None or bool(os.environ.get("RAY_ADDRESS"))
        ray.init(address=address, num_cpus=None if joins else _local_cpus(), include_dashboard=False,
                 ignore_reinit_error=True)
        started = not joins  # an embedded instance we own; never shut down a cluster we joined
    pending: list = []
    try:
        if started:  # a task asking for more than this machine has would wait forever
            have = ray.cluster_resources()
            for name, need, key in (("cpus_per_cell", cpus_per_cell, "CPU"), ("gpus_per_cell", gpus_per_cell, "GPU")):
                if need > have.get(key, 0.0):
                    raise ValueError(f"{name}={need:g} exceeds the {have.get(key, 0.0):g} {key}s of the local "
                                     "Ray instance; lower it or join a cluster with address=")
        task = ray.remote(num_cpus=cpus_per_cell, num_gpus=gpus_per_cell, max_retries=max_retries)(run_cell)
        fn_ref = ray.put(fn)  # serialised once, shared by all tasks
        cell_of = {}
        submitted = {}
        for i in todo:
            ref = task.remote(fn_ref, specs[i])
            cell_of[ref] = i
            submitted[ref] = time.perf_counter()
            pending.append(ref)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            ref = done[0]
            spec = specs[cell_of[ref]]
            try:
                record = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - the task itself failed (worker died, fn not importable, ...)
                record = _error_record(spec, exc, time.perf_counter() - submitted[ref])
            record = _append(path, record)
            latest[record["spec_hash"]] = record
            bar.update(record)
    except BaseException:
        for ref in pending:  # interrupted: do not leave our tasks running on a shared cluster
            try:
                ray.cancel(ref)
            except Exception:  # noqa: BLE001 - best effort
                pass
        raise
    finally:
        if started:
            ray.shutdown()
