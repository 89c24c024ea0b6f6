import os
import pathlib

import pytest
import torch
from browser_env import browser_can_run, selected_labs  # tests/ is on sys.path (rootdir conftest)

# The Triton kernels (kernels/echo_kernels/) run under the CPU interpreter where there is no GPU; the variable must be
# set before any @triton.jit definition is executed, i.e. before `echo_kernels` is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Tests never use the network: Hugging Face libraries fail fast instead of trying to download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    _leave_labs_to_the_browser(config, items)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _leave_labs_to_the_browser(config, items) -> None:
    """One execution per lab: where the browser phase runs a lab (in this session, or beside it in the process
    ``make test`` starts: ``ECHO_TUTOR_BROWSER_BESIDE=1``), that run, with ``ECHO_TUTOR_SOLUTIONS=both``, is
    the lab's nbval run (it fails on any error output) and its no-exercise run, so nbval's cells of that lab
    are deselected here."""
    if not browser_can_run():
        return
    beside = os.environ.get("ECHO_TUTOR_BROWSER_BESIDE") == "1"
    here = {it.name for it in items if it.get_closest_marker("browser")}
    labs = {lab for lab in selected_labs() if beside or f"test_lab_in_browser[{lab}]" in here}
    drop = [it for it in items if it.path.suffix == ".ipynb" and it.path.stem in labs]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = [it for it in items if it not in drop]


def assert_close(name: str, ref: torch.Tensor, got: torch.Tensor, ratio: float = 1e-9) -> None:
    """fla-style check: relative RMS error of ``got`` against ``ref`` below ``ratio`` (max abs in the message)."""
    ref, got = ref.detach().double(), got.detach().double()
    assert ref.shape == got.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    err = (ref - got).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp_min(1e-30)
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    assert err <= ratio, f"{name}: rel-RMS {err:.3g} > {ratio:g}, max abs {(ref - got).abs().max():.3g}"


def scan_steps(module, seq: torch.Tensor, state):
    """Feed ``seq [B, T, ...]`` through ``module.step`` one position at a time.

    Returns the outputs stacked on dim 1 and the final state (for step == forward tests)."""
    outs = []
    for t in range(seq.shape[1]):
        out, state = module.step(seq[:, t], state)
        outs.append(out)
    return torch.stack(outs, 1), state


TIMING = ("seconds", "train_seconds", "time_s")  # wall-clock fields: the only ones local and Ray may differ in


def untimed(x):
    """``x`` (records, nested) without its wall-clock fields."""
    if isinstance(x, dict):
        return {k: untimed(v) for k, v in x.items() if k not in TIMING}
    if isinstance(x, list):
        return [untimed(v) for v in x]
    return x


TESTS_DIR = str(pathlib.Path(__file__).resolve().parent)
REPO = str(pathlib.Path(__file__).resolve().parent.parent)
RAY_REASON = "the Ray executor needs ray: pip install 'echo_tutor[cluster]'"


def worker_pythonpath() -> str:
    """PYTHONPATH for Ray workers and subprocesses: tests/ (grid_cells) and this checkout, in front of
    whatever is set already."""
    return os.pathsep.join(p for p in (TESTS_DIR, REPO, os.environ.get("PYTHONPATH", "")) if p)


@pytest.fixture(scope="module")
def ray_local():
    """An embedded local Ray (2 CPUs at most) whose workers import this checkout's echo_tutor and tests/
    grid_cells, one thread each; shut down after the module's tests."""
    ray = pytest.importorskip("ray", reason=RAY_REASON)
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=min(2, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": worker_pythonpath(), "OMP_NUM_THREADS": "1"}})
    try:
        yield ray
    finally:
        ray.shutdown()
