#!/usr/bin/env bash
# Test the declared version floors: build (or reuse) a separate virtual environment with the lowest
# versions pyproject.toml allows, install echo_tutor[test] into it, and run the unit tests there.
#
#   scripts/test_min.sh [PYTEST_ARGS...]     e.g. scripts/test_min.sh -x tests/test_ska_layer.py
#
# What it installs (override with the variables in brackets):
#   torch==2.4.1   [TORCH_MIN]   the core floor `torch>=2.4`. From PyPI this is the CUDA build (torch
#                                2.4.1+cu121 with its NVIDIA libraries: about 5 GB, 1.5 min from a local
#                                mirror). A CPU wheel index in PIP_INDEX_URL, where one is reachable,
#                                should give 2.4.1+cpu instead (untested here).
#   numpy==1.24.0  [NUMPY_MIN]   the floor `numpy>=1.24` itself (it has Python 3.11 wheels; torch 2.4.1
#                                wheels are built against numpy 2 and run with 1.x as well)
#   echo_tutor[test]             editable, with a constraints file pinning torch and numpy, so pip cannot
#                                upgrade them while resolving the test tools
#   triton==3.2.0  [TRITON_MIN]  the `triton` extra's floor, installed LAST with --no-deps: torch 2.4.1
#                                pins triton==3.0.0, which fails the kernels ("arange's arguments must be
#                                of type tl.constexpr"), and pip would put 3.0.0 back while installing
#                                the package if triton were installed before it. TRITON_MIN= (empty)
#                                leaves torch's own triton 3.0.0.
# torch.compile's backward ("aot_eager", which imports inductor) does not load at these floors: torch 2.4's
# inductor reads triton's AttrsDescriptor as a dataclass, which it is not in triton 3.2, so those two tests skip
# saying so (tests/test_compile.py); torch.compile at torch 2.4.1 needs torch's own triton 3.0.0, the kernels
# triton >= 3.2. The forward traces (fullgraph, "eager") pass at the floors.
# The `echokv` extra is not installed: its floor is torch>=2.6 (transformers 5 disables PyTorch below
# 2.6), so here its tests skip (pytest.importorskip("transformers")).
#
# Then it runs, with TRITON_INTERPRET=1 (the kernels in Triton's CPU interpreter) and no GPU tests:
#   python -m pytest tests -m "not browser and not slow and not gpu" -p no:cacheprovider -q [PYTEST_ARGS]
# and prints the versions it tested (python, torch, numpy, triton). The exit status is pytest's.
#
# The environment is $VENV_MIN (default .venv-min, git-ignored), separate from .venv. Idempotent like
# scripts/setup.sh: a stamp in $VENV_MIN records a hash of pyproject.toml, this script, the pinned
# versions and the venv's Python; while that matches and the pins are what is installed, the install
# steps are skipped (no index needed) and only the tests run. ECHO_TUTOR_MIN_FORCE=1 reinstalls;
# `rm -rf .venv-min` starts from scratch. PYTHON picks the interpreter (default python3, >= 3.11).
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
venv="${VENV_MIN:-.venv-min}"
torch_v="${TORCH_MIN-2.4.1}"
numpy_v="${NUMPY_MIN-1.24.0}"
triton_v="${TRITON_MIN-3.2.0}"
stamp="$venv/.echo_tutor-test-min"
vpy="$venv/bin/python"

min_hash() {
  {
    cat pyproject.toml scripts/test_min.sh
    echo "torch=$torch_v numpy=$numpy_v triton=$triton_v"
    "$vpy" -c 'import sys; print(sys.version)'
  } | sha256sum | cut -d' ' -f1
}

# installed versions, one line: "torch=... numpy=... triton=..." ("none" when absent)
versions() {
  "$vpy" - <<'EOF'
from importlib.metadata import PackageNotFoundError, version
def v(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return "none"
print(" ".join(f"{n}={v(n)}" for n in ("torch", "numpy", "triton")))
EOF
}

# do the installed versions equal the pins? (a local tag such as +cu121 or +cpu is ignored)
pins_hold() {
  local got
  got="$(versions | sed -E 's/\+[^ ]*//g')" || return 1
  [[ " $got " == *" torch=$torch_v "* && " $got " == *" numpy=$numpy_v "* ]] || return 1
  [ -z "$triton_v" ] || [[ " $got " == *" triton=$triton_v "* ]]
}

if [ -x "$vpy" ] && [ -z "${ECHO_TUTOR_MIN_FORCE:-}" ] && [ -f "$stamp" ] &&
   [ "$(cat "$stamp")" = "$(min_hash)" ] && pins_hold &&
   "$vpy" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("echo_tutor") is None)' 2>/dev/null; then
  echo "[test-min] $venv is up to date; ECHO_TUTOR_MIN_FORCE=1 reinstalls"
else
  if [ ! -x "$vpy" ]; then
    echo "[test-min] creating $venv with $("$py" --version)"
    "$py" -m venv "$venv"
    echo '*' > "$venv/.gitignore"   # git ignores the venv even where .gitignore does not list it
  fi
  rm -f "$stamp"
  pip=("$vpy" -m pip --disable-pip-version-check -q)
  cons="$(mktemp "${TMPDIR:-/tmp}/echo_tutor-min-constraints.XXXXXX")"
  trap 'rm -f "$cons"' EXIT
  printf 'torch==%s\nnumpy==%s\n' "$torch_v" "$numpy_v" > "$cons"

  echo "[test-min] installing torch==$torch_v numpy==$numpy_v"
  "${pip[@]}" install "torch==$torch_v" "numpy==$numpy_v"
  echo "[test-min] installing echo_tutor[test] (editable; torch and numpy held by $cons)"
  "${pip[@]}" install -c "$cons" -e ".[test]"
  if [ -n "$triton_v" ]; then
    echo "[test-min] installing triton==$triton_v with --no-deps"
    "${pip[@]}" install --no-deps "triton==$triton_v"
  fi
  if ! pins_hold; then
    echo "[test-min] error: installed $(versions), wanted torch=$torch_v numpy=$numpy_v triton=${triton_v:-any}" >&2
    exit 1
  fi
  min_hash > "$stamp"
fi

tested="python=$("$vpy" -c 'import platform; print(platform.python_version())') $(versions)"
echo "[test-min] testing with $tested"
status=0
TRITON_INTERPRET=1 "$vpy" -m pytest tests -m "not browser and not slow and not gpu" -p no:cacheprovider -q "$@" ||
  status=$?
echo "[test-min] tested $tested: pytest exit status $status"
exit "$status"
