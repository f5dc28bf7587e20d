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

.PHONY: venv test test-slow demo clean

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

# Until the toy teacher lands: a tiny random-weight pipeline, exported to ONNX, one image on each path.
demo: venv
	$(BIN)/pocketdiff create --arch tiny --out $(DEMO)/pipeline --force
	$(BIN)/pocketdiff export --pipeline $(DEMO)/pipeline --out $(DEMO)/onnx --force
	$(BIN)/pocketdiff generate --pipeline $(DEMO)/pipeline "a small red circle in the top left" --steps 20 --seed 0 --out $(DEMO)/torch.png
	$(BIN)/pocketdiff generate --onnx $(DEMO)/onnx "a small red circle in the top left" --steps 20 --seed 0 --out $(DEMO)/runtime.png
	@echo "demo outputs in $(DEMO)/: torch.png (diffusers path), runtime.png (torch-free runtime)"

clean:
	rm -rf build .pytest_cache
