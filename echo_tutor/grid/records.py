"""One cell and its record, and the records file ``<out_dir>/records.jsonl`` (append-only, resumable)."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import time
import traceback
from typing import Any, Callable, Iterable, Sequence

from ..errors import BadArgumentError

__all__ = ["RECORDS_FILE", "CellFn", "GridError", "spec_hash", "run_cell", "failed", "load_records", "latest_records",
           "error_record", "append_record", "drop_incomplete_line", "records_path"]

RECORDS_FILE = "records.jsonl"
_TRACEBACK_FRAMES = 6  # the innermost frames kept in a record's "traceback"
_TRACEBACK_CHARS = 4000

CellFn = Callable[[dict], dict]


def _as_spec(cell: Any) -> Any:
    """A typed cell's plain-dict spec (anything else as it is)."""
    to_spec = getattr(cell, "spec", None)
    return to_spec() if callable(to_spec) and not isinstance(cell, dict) else cell


def spec_hash(spec: dict) -> str:
    """A stable 16-hex-digit hash of a cell spec.

    The sha1 of ``json.dumps(spec, sort_keys=True, default=str)``: independent of key order, and the same
    for a spec and its JSON round trip (tuples and lists hash alike), so a spec read back from
    ``records.jsonl`` has the hash it was recorded under.
    """
    if not isinstance(spec, dict):
        raise BadArgumentError(f"spec must be a dict, got {type(spec).__name__}")
    try:
        text = json.dumps(spec, sort_keys=True, default=str)
    except (TypeError, ValueError) as exc:  # e.g. keys of mixed types, circular references
        raise BadArgumentError(f"spec must be JSON-serialisable with string keys: {exc}") from None
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]



def run_cell(fn: CellFn, spec: Any) -> dict:
    """Run one cell: call ``fn(spec)`` and return its record (``spec``: a plain dict, or a typed
    :class:`~echo_tutor.grid.cells.Cell`, which ``fn`` gets as it is and the record keeps as ``spec.spec()``).

    The record is ``{"spec", "spec_hash", "result", "error", "traceback", "seconds"}``: on success
    ``result`` is the dict ``fn`` returned and ``error`` / ``traceback`` are ``None``; if ``fn`` raises (an
    ``Exception``) or returns something other than a dict, ``result`` is ``None``, ``error`` is
    ``"ExcType: message"`` and ``traceback`` holds the innermost frames. ``seconds`` is the wall time of
    the call. Raises ``ValueError`` only for a bad ``fn`` or ``spec``, never for a failing cell.
    """
    if not callable(fn):
        raise BadArgumentError(f"fn must be callable, got {type(fn).__name__}")
    fn_arg, spec = spec, _as_spec(spec)
    key = spec_hash(spec)
    t0 = time.perf_counter()
    result: Any = None
    error: str | None = None
    tb: str | None = None
    try:
        result = fn(fn_arg)
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
        where = f" (records in {records_path(out_dir)}; rerun the same command to retry them)" if out_dir else ""
        lines = [f"{len(self.failed)} of {total} cells failed{where}:"]
        for r in self.failed:
            spec = json.dumps(r.get("spec"), sort_keys=True, separators=(",", ":"), default=str)
            lines.append(f"  {spec}: {r.get('error')}")
        super().__init__("\n".join(lines))



def _describe_exception(exc: BaseException) -> str:
    message = str(exc).strip()
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__



def error_record(spec: Any, exc: BaseException, seconds: float | None) -> dict:
    """A record for a cell whose task failed outside ``fn`` (e.g. its Ray worker died)."""
    spec = _as_spec(spec)
    return {"spec": spec, "spec_hash": spec_hash(spec), "result": None, "error": _describe_exception(exc),
            "traceback": "".join(traceback.format_exception(exc, limit=-_TRACEBACK_FRAMES))[-_TRACEBACK_CHARS:],
            "seconds": seconds}



def records_path(out_dir: str | os.PathLike) -> pathlib.Path:
    if not isinstance(out_dir, (str, os.PathLike)):
        raise BadArgumentError(f"out_dir must be a path (str or os.PathLike), got {type(out_dir).__name__}")
    return pathlib.Path(out_dir) / RECORDS_FILE



def load_records(out_dir: str | os.PathLike) -> list[dict]:
    """All records in ``<out_dir>/records.jsonl``, in file order (a cell that was rerun appears more than
    once; the later record is the current one). A missing file gives ``[]``; an incomplete last line (the
    process was killed while writing it) is skipped."""
    path = records_path(out_dir)
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
            raise BadArgumentError(f"{path}: line {i + 1} is not valid JSON; the records file is corrupt") from None
        if not isinstance(rec, dict) or "spec_hash" not in rec:
            raise BadArgumentError(f"{path}: line {i + 1} is not a grid record")
        records.append(rec)
    return records



def latest_records(records: Iterable[dict]) -> dict[str, dict]:
    """The latest record per spec hash."""
    return {r["spec_hash"]: r for r in records}



def drop_incomplete_line(path: pathlib.Path) -> None:
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



def append_record(path: pathlib.Path, record: dict) -> dict:
    """Append ``record`` as one JSON line (flushed and fsync'ed); return it as read back from JSON, so that
    a fresh record looks exactly like one loaded by a later run."""
    line = json.dumps(record, default=str)
    with path.open("a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
    return json.loads(line)

