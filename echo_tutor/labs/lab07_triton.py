"""Lab 07, exercise 2: ``chunk_gram_triton(ok, kk, S)``, the per-chunk Gram computed by the learner's own
``@triton.jit`` kernel: its solution (a kernel and its launcher) and its checker, with the tools the checker
uses (inputs surrounded by NaN in memory, a watch on the kernels launched and the buffers the student's code
allocates, stages of sizes that each show one mistake). See :mod:`echo_tutor.labs.lab07`, which re-exports them."""

import contextlib
import math
import sys

import torch

from . import (ExerciseError, NotAttempted, batch_dims_hint, call_student, checker, close, fresh_generator,
               leading_dims, passed)
from .guard import ALLOW, _kernel_dirs
from .lab07_common import LATER_GRAM_LEADS
from .lab07_gram import _chunk_gram_solution, _gram_hint

try:  # the Triton exercise needs triton (the `triton` extra); the other exercises do not
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where triton is missing
    triton = tl = None

__all__ = ["_chunk_gram_triton_solution", "check_chunk_gram_triton"]


# ------------------------------------------------------------------------------------- chunk_gram_triton
if tl is not None:  # (its annotations need triton.language)
    def _chunk_gram_kernel_solution(ok_ptr, kk_ptr, out_ptr, T, r, s_on, s_ot, s_or, s_kn, s_kt, s_kr,
                                    S: tl.constexpr, BR: tl.constexpr):
        # one program per (flattened batch row n, chunk c): the [S, BR] tiles of the chunk, one tl.dot
        n = tl.program_id(0)
        c = tl.program_id(1)
        t = c * S + tl.arange(0, S)                                    # the chunk's token rows
        i = tl.arange(0, BR)                                           # feature columns, padded to BR >= 16
        m = (t[:, None] < T) & (i[None, :] < r)                        # rows past T, columns past r read as 0
        a = tl.load(ok_ptr + n * s_on + t[:, None] * s_ot + i[None, :] * s_or, mask=m, other=0.0).to(tl.float32)
        b = tl.load(kk_ptr + n * s_kn + t[:, None] * s_kt + i[None, :] * s_kr, mask=m, other=0.0).to(tl.float32)
        gram = tl.dot(tl.trans(a), b, input_precision="ieee")          # [BR, BR] sum_s ok_s kk_s^T (ieee: no tf32)
        o = out_ptr + (n * tl.num_programs(1) + c) * r * r + i[:, None] * r + i[None, :]
        tl.store(o, gram, mask=(i[:, None] < r) & (i[None, :] < r))   # only the r x r corner is ours


_KERNEL: dict[str, object] = {}


def _solution_kernel():
    """``_chunk_gram_kernel_solution`` under ``triton.jit``, made on first use (after the lab has chosen the
    interpreter or a GPU: ``TRITON_INTERPRET`` is read when a kernel is defined)."""
    if triton is None:
        raise ExerciseError("chunk_gram_triton needs triton: pip install 'echo_tutor[triton]'")
    if "k" not in _KERNEL:
        _KERNEL["k"] = triton.jit(_chunk_gram_kernel_solution)
    return _KERNEL["k"]


def _chunk_gram_triton_solution(ok, kk, S):
    *lead, T, r = ok.shape
    a, b = ok.reshape(-1, T, r), kk.reshape(-1, T, r)  # leading dims flattened (a view where it can be)
    N, nc = a.shape[0], triton.cdiv(T, S)                # the last chunk may be partial
    out = torch.empty(N, nc, r, r, device=ok.device, dtype=torch.float32)
    BR = max(16, triton.next_power_of_2(r))               # tl.dot needs >= 16 on a GPU
    _solution_kernel()[(N, nc)](a, b, out, T, r, *a.stride(), *b.stride(), S=S, BR=BR)
    return out.reshape(*lead, nc, r, r)


def _gram_padded(ok: torch.Tensor, kk: torch.Tensor, S: int) -> torch.Tensor:
    """The reference for any T: zero rows pad T to whole chunks (float64)."""
    pad = (-ok.shape[-2]) % S
    z = lambda x: torch.nn.functional.pad(x.double(), (0, 0, 0, pad))  # noqa: E731
    return _chunk_gram_solution(z(ok), z(kk), S)


_SLACK = 1 << 14  # NaN-filled elements after every buffer the checker hands out or watches


def _poisoned(shape: tuple[int, ...], g: torch.Generator, device: str, strided: bool) -> torch.Tensor:
    """A float32 tensor of random values whose surroundings in memory are NaN: ``_SLACK`` elements after it
    (and, if ``strided``, padding after every row and every T), so that a load the kernel should have masked
    reads NaN instead of another tensor's numbers."""
    *lead, T, r = shape
    vals = torch.randn(*shape, generator=g)
    if strided:
        bigger = (*lead, T + 3, r + 5)
        buf = torch.full((math.prod(bigger) + _SLACK,), float("nan"))
        view = buf[:math.prod(bigger)].view(bigger)[..., :T, :r]
    else:
        buf = torch.full((math.prod(shape) + _SLACK,), float("nan"))
        view = buf[:math.prod(shape)].view(shape)
    view.copy_(vals)
    if device != "cpu":  # the same layout on the GPU
        dbuf = buf.to(device)
        view = dbuf.as_strided(view.shape, view.stride(), view.storage_offset())
    return view


@contextlib.contextmanager
def _watch_kernels(student_files: set[str]):
    """Within the block: count the Triton kernels launched (any ``@triton.jit`` function's launch), and give
    every floating tensor that the student's own code allocates with ``torch.empty/zeros/full(_like)`` a
    NaN-filled tail of ``_SLACK`` elements, so a store past its end lands there (seen after the call) instead
    of in someone else's memory; ``torch.empty`` comes back NaN-filled, so an entry never written shows.
    Yields ``(launched kernels, [(buffer, used elements)])``."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    launched: list[object] = []
    buffers: list[tuple[torch.Tensor, int]] = []
    full = torch.full  # the real one: the padding's own allocation must not be padded
    # a launch goes through the class's ``run`` (Triton >= 3.3; the interpreter's ``run`` was an instance
    # attribute before, and ``kernel[grid]`` went through ``__getitem__``: Triton 3.2, the extra's floor)
    saved_runs = {(cls, attr): getattr(cls, attr) for cls in (JITFunction, InterpretedFunction)
                  for attr in ["run" if hasattr(cls, "run") else "__getitem__"]}

    def counting(run):
        def wrapped(self, *args, **kwargs):
            launched.append(getattr(self, "fn", self))
            return run(self, *args, **kwargs)
        return wrapped

    def padded(alloc, unset):
        def make(*args, **kwargs):
            out = alloc(*args, **kwargs)
            caller = sys._getframe(1).f_code.co_filename
            if caller not in student_files or "out" in kwargs or not out.is_floating_point() or out.numel() == 0:
                return out
            buf = full((out.numel() + _SLACK,), float("nan"), dtype=out.dtype, device=out.device)
            view = buf[:out.numel()].view(out.shape)
            if not unset:  # torch.empty's memory stays NaN: an entry the kernel never writes shows
                view.copy_(out)
            buffers.append((buf, out.numel()))
            return view
        return make

    names = ("empty", "zeros", "full", "empty_like", "zeros_like", "full_like")
    saved_allocs = {n: getattr(torch, n) for n in names}
    try:
        for (cls, attr), run in saved_runs.items():
            setattr(cls, attr, counting(run))
        for n, f in saved_allocs.items():
            setattr(torch, n, padded(f, n.startswith("empty")))
        yield launched, buffers
    finally:
        for (cls, attr), run in saved_runs.items():
            setattr(cls, attr, run)
        for n, f in saved_allocs.items():
            setattr(torch, n, f)


def _student_files(fn) -> set[str]:
    """The files of the student's launcher and of the functions it names (its helpers): their allocations
    are watched."""
    fn = getattr(fn, "student", fn)
    files = {getattr(getattr(fn, "__code__", None), "co_filename", "")}
    for n in getattr(getattr(fn, "__code__", None), "co_names", ()):
        obj = getattr(fn, "__globals__", {}).get(n)
        code = getattr(obj, "__code__", None)
        if code is not None and not code.co_filename.startswith(sys.prefix):
            files.add(code.co_filename)
    return files - {""}


def _kernel_file(kernel) -> str:
    code = getattr(getattr(kernel, "fn", kernel), "__code__", None)
    return getattr(code, "co_filename", "")


# (what the stage adds, leading shape, T, r, S, strided): each stage adds one difficulty to the ones before it,
# so the first stage that fails names the mistake; then the leading shapes, and the lab's later shapes.
_STAGES = [
    ("T a multiple of S, r = 16, contiguous", (2,), 32, 16, 16, False),
    ("r = 5, not a multiple of 16", (2,), 32, 5, 16, False),
    ("T = 37, not a multiple of S = 16 (the last chunk has 5 tokens)", (2,), 37, 5, 16, False),
    ("a strided view (rows r + 5 apart, as a slice of a bigger tensor is)", (2,), 37, 5, 16, True),
    ("S = 32, T = 45, r = 7", (2,), 45, 7, 32, True),
]


def _triton_hint(what: str, strided: bool, passed_so_far: list[str], out: torch.Tensor, ok, kk, S: int) -> str:
    """What the first failing stage says about the mistake."""
    nan = not bool(torch.isfinite(out).all())
    if not passed_so_far:
        if bool(torch.isnan(out).all()):
            return (" Every entry is NaN: your kernel wrote nothing into the output (the checker fills torch.empty "
                    "with NaN). Store the chunk's Gram, and launch a grid that covers every (row, chunk).")
        if nan:
            return (" NaN in the output: your kernel read memory outside the inputs (the checker surrounds them "
                    "with NaN) or left entries unwritten (torch.empty is NaN-filled here).")
        return _gram_hint(out, ok.cpu().double(), kk.cpu().double(), S) or (
            " Check the offsets: element (t, i) of row n is at n * stride(0) + t * stride(1) + i * stride(2).")
    if what.startswith("r = 5"):
        return (" Right for r = 16, wrong for r = 5: the block is BR >= 16 wide but a row of the inputs is r "
                "long and the output is r x r per chunk: mask the columns past r on load (other=0.0) and on store, "
                "and address the output with r, not BR.")
    if what.startswith("T = 37"):
        return (" Right when T is a multiple of S, wrong for T = 37: the last chunk's rows past T must be loaded "
                "as 0 (mask the rows, other=0.0)" + ("; unmasked, they read NaN here." if nan else "."))
    if strided and not any("strided" in p for p in passed_so_far):
        return (" Right on contiguous inputs, wrong on a strided view: address the inputs with their strides "
                "(pass ok.stride(...) to the kernel), or make them contiguous in the launcher.")
    if what.startswith("S = 32"):
        return " Right for S = 16 only: take the chunk size from the argument S (a tl.constexpr), not a constant."
    if nan:
        return (" NaN in the output: your kernel read memory outside the inputs (the checker surrounds them "
                "with NaN: mask every load, rows past T and columns past r, with other=0.0), or left entries "
                "unwritten (torch.empty is NaN-filled here: the grid must cover every (row, chunk)).")
    return ""


@checker(forbid=("chunk_stats", "_chunk_stats_kernel", "_readout_kernel", "_prefix_kernel", "_stats_prefix_fwd",
                 "_stats_prefix_bwd", "_walk_tiles", "_readout_fwd", "_readout_bwd", "_decode_kernel",
                 "fused_forward", "ska_chunked", "ska_chunked_ops", "_solution_kernel", "chunk_gram"))
def check_chunk_gram_triton(fn) -> None:
    """Check ``fn(ok [..., T, r], kk [..., T, r], S) -> [..., ceil(T/S), r, r]``: a launcher of the student's
    own Triton kernel, on sizes chosen to show one mistake each (the first failing stage names it), inputs
    surrounded by NaN in memory, then zero, one and two leading dims and the lab's later shapes."""
    name = "chunk_gram_triton"
    if triton is None:
        raise ExerciseError(f"{name}: needs triton (pip install 'echo_tutor[triton]')")
    g, seed = fresh_generator()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    files = _student_files(fn)
    watching = ALLOW.get() is not None  # the learner's function, not the solution run by the lab or a test
    stages = _STAGES + [(f"leading dims {lead}", lead, 21, 6, 16, lead == (2, 3))
                        for lead in leading_dims(*LATER_GRAM_LEADS)]
    passed_so_far: list[str] = []
    passed_leads: list[tuple[int, ...]] = []
    for what, lead, T, r, S, strided in stages:
        ok = _poisoned((*lead, T, r), g, dev, strided)
        kk = _poisoned((*lead, T, r), g, dev, strided)
        nc = -(-T // S)
        where = f"{what}: ok, kk {tuple(ok.shape)}, S = {S}, seed {seed}"
        lead_hint = batch_dims_hint(lead, passed_leads) if lead not in passed_leads else ""
        try:
            with _watch_kernels(files) as (launched, buffers):
                out = call_student(name, fn, ok, kk, S)
        except NotAttempted:
            raise
        except ExerciseError as e:
            raise ExerciseError(f"{e} ({where}).{lead_hint}") from None
        if watching:
            theirs = [k for k in launched if _kernel_file(k).startswith(_kernel_dirs())
                      or getattr(getattr(k, "fn", k), "__name__", "").endswith("_solution")]
            if theirs:
                raise ExerciseError(f"{name}: your launcher runs the project's kernel "
                                    f"`{getattr(getattr(theirs[0], 'fn', theirs[0]), '__name__', '?')}`, which "
                                    "computes the answer for you. Write your own @triton.jit kernel.")
            if not launched:
                raise ExerciseError(f"{name}: your launcher launched no @triton.jit kernel ({where}). The "
                                    "exercise is the kernel: launch yours with kernel[grid](...).")
        if any(bool(torch.isfinite(buf[n:]).any()) for buf, n in buffers):
            raise ExerciseError(f"{name}: your kernel stores past the end of its output ({where}). The stored "
                                "block is BR x BR with BR >= 16 > r: store only its r x r corner (a mask), at the "
                                "chunk's place in the [..., nc, r, r] output (rows r apart, chunks r * r apart).")
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (*lead, nc, r, r):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            hint = lead_hint
            if isinstance(out, torch.Tensor) and tuple(out.shape) == (*lead, T // S, r, r):
                hint = (f" The last, partial chunk is a chunk too: nc = ceil(T / S) = {nc} (`triton.cdiv`), "
                        "and its missing rows read as 0.")
            raise ExerciseError(f"{name}: expected a tensor [..., ceil(T/S), r, r] = {(*lead, nc, r, r)} "
                                f"({where}), got {got}.{hint}")
        out = out.detach().cpu().double()
        want = _gram_padded(ok.cpu(), kk.cpu(), S)
        if close(out, want, 1e-5):
            passed_so_far.append(what)
            passed_leads.append(lead)
            continue
        finite = bool(torch.isfinite(out).all())
        err = ((out - want).norm() / want.norm()).item() if finite else float("nan")
        hint = lead_hint or _triton_hint(what, strided, passed_so_far, out, ok, kk, S)
        if finite and 1e-5 < err < 1e-2 and dev == "cuda":
            hint += (" An error of about 1e-3 is tf32: tl.dot rounds float32 inputs to tf32 on a GPU unless you "
                     "pass input_precision=\"ieee\".")
        raise ExerciseError(f"{name}: wrong values ({where}): relative error {err:.2g}.{hint}")
    return passed(name)
