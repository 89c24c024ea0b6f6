"""The Ray executor: every cell a Ray task, each record appended by the driver as its task finishes."""

from __future__ import annotations

import os
import pathlib
import time
from typing import Any, Sequence

from ..errors import BadArgumentError
from .records import CellFn, append_record, error_record, run_cell

__all__ = ["run_ray"]


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



def run_ray(specs: Sequence[dict], todo: list[int], fn: CellFn, path: pathlib.Path, latest: dict[str, dict],
            bar: Any, options: Any) -> None:
    """Submit the cells ``todo`` as Ray tasks; append each record as its task finishes (driver only)."""
    ray = _import_ray()
    address, cpus_per_cell, gpus_per_cell = options.address, options.cpus_per_cell, options.gpus_per_cell
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
                    raise BadArgumentError(f"{name}={need:g} exceeds the {have.get(key, 0.0):g} {key}s of the local "
                                     "Ray instance; lower it or join a cluster with address=")
        task = ray.remote(num_cpus=cpus_per_cell, num_gpus=gpus_per_cell, max_retries=options.max_retries)(run_cell)
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
                record = error_record(spec, exc, time.perf_counter() - submitted[ref])
            record = append_record(path, record)
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

