"""Run a grid of experiment cells, locally or on Ray, with resumable JSONL records.

An experiment is a list of *cells*; each cell is a typed, frozen :class:`Cell` (``cells.py``) whose plain-dict
*spec* (``{"experiment": "cliff", "preset": "echo", "gap": 64, "seed": 0}``) is recorded and hashed (a plain
dict works as a cell too). One function ``fn(cell) -> dict`` runs one cell; :func:`run_cell` wraps it into one
*record*::

    {"spec": {...}, "spec_hash": "3f2a...", "result": {...}, "error": None, "traceback": None,
     "seconds": 12.3}

:func:`run_grid` runs the cells that are not done yet, either one after the other in this process
(``GridOptions(executor="local")``, the default) or as Ray tasks (``GridOptions(executor="ray")``). Both paths
call the same :func:`run_cell`, so they give the same records for the same specs (up to ``"seconds"``). Each
record is appended to ``<out_dir>/records.jsonl`` as soon as its cell finishes (one JSON line, flushed and
fsync'ed, written by this process only), so a grid that is killed can be rerun with the same ``out_dir``:
cells already recorded without an error are skipped, cells recorded with an error are run again. A cell that
raises is recorded with its error and the grid goes on; :func:`failed` lists those records afterwards.

There is no scheduler, queue or retry logic here beyond what Ray does: Ray places the tasks
(``cpus_per_cell``, ``gpus_per_cell``) and reruns a task whose worker died (``max_retries``).

Example::

    from echo_tutor.grid import GridOptions, failed, run_grid

    def cell(spec):                      # module level, so that Ray workers can import it
        ...
        return {"acc": acc}

    specs = [{"gap": g, "seed": s} for g in (0, 64, 256) for s in range(3)]
    records = run_grid(specs, cell, "runs/gap-sweep", GridOptions(executor="ray", address="auto"))
    for r in failed(records):
        print(r["spec"], r["error"])

The Ray executor needs the ``cluster`` extra: ``pip install 'echo_tutor[cluster]'``.

Modules: ``cells`` (the typed cell, and how older records map to today's hashes), ``records`` (a cell's
record, the records file), ``run`` (``GridOptions``, ``run_grid``),
``ray_executor`` (the Ray path).
"""

from .cells import Cell, rehash_records
from .records import RECORDS_FILE, GridError, failed, load_records, run_cell, spec_hash
from .run import EXECUTORS, GridOptions, run_grid

__all__ = ["RECORDS_FILE", "EXECUTORS", "Cell", "GridError", "rehash_records", "GridOptions", "spec_hash", "run_cell", "load_records", "run_grid",
           "failed"]
