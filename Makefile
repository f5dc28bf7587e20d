# pocketdiff: `make demo` runs the main job, `make test` runs the tests. Both set up .venv first.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# This machine's pip config lists local indexes that do not exist; drop that noise only.
QUIET_PIP := { grep -v "^WARNING: Location '.*' is ignored" || true; }
DEMO := build/demo

.PHONY: venv test test-slow demo teacher baseline export-bench bench-sd15 clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0 2>&1 | $(QUIET_PIP)
	$(BIN)/pip install -q -e '.[test]' 2>&1 | $(QUIET_PIP)
	touch $(STAMP)

test: venv
	$(BIN)/python -m pytest -q --durations=10

test-slow: venv
	$(BIN)/python -m pytest -q -m slow --durations=0 -s

# The main job on the shipped toy teacher: a sample grid and a quick eval as one HTML page; the
# teacher exported as an app bundle (ONNX, Core ML, ExecuTorch, parity-checked); one image from the
# bundle through the torch-free runtime on onnxruntime and on ExecuTorch.
TEACHER := pocketdiff/toyworld/assets
PROMPT := a small red circle in the top left on a grey background
demo: venv
	$(BIN)/pocketdiff toy demo --out $(DEMO)
	$(BIN)/pocketdiff export --pipeline $(TEACHER)/pipeline --out $(DEMO)/bundle --targets onnx,coreml,executorch \
		--steps 25 --guidance 2 --scheduler ddim --force
	$(BIN)/pocketdiff generate --bundle $(DEMO)/bundle --backend onnx "$(PROMPT)" --steps 25 --guidance 2 --out $(DEMO)/runtime_onnx.png
	$(BIN)/pocketdiff generate --bundle $(DEMO)/bundle --backend executorch "$(PROMPT)" --steps 25 --guidance 2 --out $(DEMO)/runtime_executorch.png
	@echo "demo report: $(DEMO)/index.html; app bundle: $(DEMO)/bundle; runtime samples: $(DEMO)/runtime_*.png"

# Rebuild the toy teacher from scratch (resumable; see README for the wall time), and its docs tables.
teacher: venv
	$(BIN)/pocketdiff toy train-teacher --out build/teacher

baseline: venv
	$(BIN)/pocketdiff toy baseline --n 500 --out docs/toy_baseline.md

# Latency record for docs/export.md: torch vs onnxruntime vs ExecuTorch on the tiny and toy pipelines.
export-bench: venv
	$(BIN)/python scripts/export_benchmark.py --threads 2

# SD1.5 results page (docs/sd15_benchmark.md/.json/.html): torch, onnxruntime, ExecuTorch per component, and
# diffusers/optimum/ours side by side at 512². Builds its models once under build/bench (~25 min the first time,
# ~15 GB peak RSS); then about 40 min of measuring on 2 cores.
bench-sd15: venv
	$(BIN)/python scripts/sd15_benchmark.py --threads 2

clean:
	rm -rf build .pytest_cache
