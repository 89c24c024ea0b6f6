# The two commands of the README:
#   make lab    set up .venv (CPU torch first where there is no CUDA) and start JupyterLab on notebooks/
#   make test   set up .venv and run the whole suite (scripts/test.sh): the unit tests and, beside them, every
#               lab in JupyterLab in headless Chromium (tests/browser); each lab executed once, as a learner with
#               no exercise done and as the instructor (ECHO_TUTOR_SOLUTIONS=both); without chromium nbval
#               runs the labs instead
# Setup is skipped when .venv is current (a stamp in .venv: scripts/setup.sh), so both start offline.
VENV   ?= .venv
PY     := $(VENV)/bin/python
EXTRAS ?= lab,test,echokv,triton,cluster
# extra flags for JupyterLab, e.g. LAB_ARGS="--ip 0.0.0.0 --no-browser" on a remote GPU machine
LAB_ARGS ?=
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)
# .jupyter/ (this repo) on Jupyter's config path: saving a lab keeps it output-free and its .py header as
# committed, so opening and running a lab leaves git clean; .py labs open as notebooks.
LAB_ENV := JUPYTER_CONFIG_PATH="$(CURDIR)/.jupyter$${JUPYTER_CONFIG_PATH:+:$$JUPYTER_CONFIG_PATH}"
# the labs tests/browser opens, e.g. BROWSER_LABS=01,07 (default: all), how many controls of each figure cell
# it moves (BROWSER_CONTROLS=all: every one; default 1), and in how many figure cells a lab (BROWSER_CELLS=all;
# default 2)
BROWSER_LABS ?=
BROWSER_CONTROLS ?= 1
BROWSER_CELLS ?= 2

.PHONY: claims preview setup lab test test-fast test-min test-unit test-labs test-browser gpu-check notebooks bench checkpoints cliff kpower results convert clean

setup:
	bash scripts/setup.sh $(EXTRAS)

lab: setup
	$(LAB_ENV) $(VENV)/bin/jupyter lab notebooks/ $(ROOT_FLAG) $(LAB_ARGS)

test: setup
	BROWSER_LABS=$(BROWSER_LABS) BROWSER_CONTROLS=$(BROWSER_CONTROLS) BROWSER_CELLS=$(BROWSER_CELLS) bash scripts/test.sh $(PY)

# The quick loop while working (under 3 minutes here): the unit tests without the `slow` ones (those that train
# to a result, load SmolLM2, start Ray or grade notebooks in kernels) and without the browser; `make test` still
# runs everything.
test-fast: setup
	$(PY) -m pytest tests -m "not slow and not browser" -p no:cacheprovider

# The declared version floors (torch 2.4.1, numpy 1.24.0, triton 3.2.0) in a separate $(VENV_MIN): the unit
# tests without the browser, slow and GPU ones; the EchoKV tests skip (that extra needs torch >= 2.6). Not part
# of `make test`. The first run downloads about 5 GB (PyPI's torch 2.4.1 is the CUDA build); later runs reuse it.
VENV_MIN ?= .venv-min
test-min:
	VENV_MIN=$(VENV_MIN) bash scripts/test_min.sh

# Pieces of `make test`, for a set-up environment.
test-unit:
	$(PY) -m pytest tests -m "not browser" -p no:cacheprovider
test-labs:
	ECHO_TUTOR_SOLUTIONS=both $(PY) -m pytest notebooks --nbval-lax --nbval-current-env -p no:cacheprovider
# Screenshots: ECHO_TUTOR_SCREENSHOTS=DIR (default: a pytest temporary folder, printed at the end).
test-browser:
	ECHO_TUTOR_BROWSER_LABS=$(BROWSER_LABS) ECHO_TUTOR_BROWSER_CONTROLS=$(BROWSER_CONTROLS) ECHO_TUTOR_BROWSER_CELLS=$(BROWSER_CELLS) $(PY) -m pytest tests/browser -v -p no:cacheprovider

# On a CUDA machine (docs/gpu.md): the GPU tests, the Triton kernel benchmark, and every lab in FULL mode
# under nbval. Stops first if nvidia-smi cannot list a GPU.
gpu-check:
	@nvidia-smi -L || { echo "gpu-check: nvidia-smi -L failed: no usable NVIDIA GPU/driver here; this target is for a CUDA machine (docs/gpu.md)" >&2; exit 1; }
	$(PY) scripts/gpu_report.py --out gpu-report.md

# Regenerate the output-free .ipynb twins after editing a lab's .py source (--update keeps the cell ids
# of the existing .ipynb, so only edited cells show in its diff).
notebooks:
	$(VENV)/bin/jupytext --update --to ipynb notebooks/[0-9]*.py

# The README's figures (docs/figures/*.png) from the shipped results: no training, offline (plotly + kaleido,
# driving Chromium: BROWSER_PATH, else chromium on PATH).
.PHONY: figures
figures:
	$(PY) scripts/make_figures.py

# Every lab executed (FAST, solutions on) and rendered to static HTML with its figures, in preview/ (open
# preview/index.html; publish the folder as it is: docs/course.md, "Publishing the previews"). LABS=00,03 for some.
preview: setup
	$(PY) -m echo_tutor.labs.preview --out preview $(if $(LABS),--labs $(LABS),)

# The claims ledger: list the course's sentences about the papers that lack a docs/claims.md link, then
# refresh the ledger's "used in" column (tests/test_claims.py checks both).
claims:
	$(PY) scripts/claims.py --update
	$(PY) scripts/claims.py

bench:
	$(PY) benchmarks/ska_forward.py
	$(PY) benchmarks/decode.py
	$(PY) benchmarks/echokv.py
	$(PY) benchmarks/convert_decode.py
	$(PY) benchmarks/kernels.py

# Retrain the shipped lab-scale checkpoints (every lab preset, LAB_RECIPE, one core each, two at a time:
# about 13 minutes per model), then the memory-cliff grid on them.
checkpoints:
	bash scripts/train_checkpoints.sh
cliff:
	$(VENV)/bin/echo-tutor cliff --fast

# The power-order table of lab 04 (K = 0, 1, 2 x 5 seeds at the lab scale, one thread per process).
# Seed 0 of K=0 and K=2 then ships as the ssm+ridge and echo-k2 checkpoints.
kpower:
	OMP_NUM_THREADS=1 $(VENV)/bin/echo-tutor ablate --scale lab --seeds 0 1 2 3 4 --threads 1 --save-models --out-dir runs/kpower
	cp runs/kpower/ablation.json echo_tutor/pretrained/results_kpower.json
	$(PY) scripts/pack_checkpoints.py --ablation runs/kpower echo_tutor/pretrained

# The results the labs read (echo_tutor/pretrained/results_*.json): the cliff grid on the shipped
# checkpoints (2 threads); the lab-scale transfer grid as two halves side by side, one thread each (about
# 25 minutes on an idle 2-core machine), merged by rerunning on the joined records; then the two halves of
# the small-scale ablation (lab 04's secondary table). The power-order table is `make kpower`.
results:
	mkdir -p runs
	$(VENV)/bin/echo-tutor cliff --fast --out-dir runs/cliff
	OMP_NUM_THREADS=1 $(VENV)/bin/echo-tutor transfer --scale lab --fast --tasks mqar tool_trace niah --out-dir runs/transfer_a > runs/transfer_a.log 2>&1 & \
	OMP_NUM_THREADS=1 $(VENV)/bin/echo-tutor transfer --scale lab --fast --tasks system_prompt multi_hop common_word --out-dir runs/transfer_b > runs/transfer_b.log 2>&1; wait
	mkdir -p runs/transfer && cat runs/transfer_a/records.jsonl runs/transfer_b/records.jsonl > runs/transfer/records.jsonl
	$(VENV)/bin/echo-tutor transfer --scale lab --fast --out-dir runs/transfer --quiet
	OMP_NUM_THREADS=1 $(VENV)/bin/echo-tutor ablate --fast --tasks mqar_gap --out-dir runs/ablation_mqar > runs/ablation_mqar.log 2>&1 & \
	OMP_NUM_THREADS=1 $(VENV)/bin/echo-tutor ablate --fast --tasks tool_trace --out-dir runs/ablation_tool > runs/ablation_tool.log 2>&1; wait
	cp runs/cliff/cliff.json echo_tutor/pretrained/results_cliff.json
	cp runs/transfer/transfer.json echo_tutor/pretrained/results_transfer.json
	$(PY) scripts/merge_ablation.py echo_tutor/pretrained/results_ablation.json runs/ablation_mqar/ablation.json runs/ablation_tool/ablation.json
	$(MAKE) convert

# Lab 08's study: SmolLM2's attention layers converted into fixed-state mixers (2 h 10 min on 2 CPU cores;
# resumable: rerun to continue), then the results and the stage-1 mixers (float16, ~5 MB) shipped.
convert:
	$(VENV)/bin/echo-tutor convert --out-dir runs/convert --threads 2
	$(PY) scripts/ship_convert.py runs/convert

clean:
	rm -rf $(VENV) $(VENV_MIN) *.egg-info .pytest_cache
