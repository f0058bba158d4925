# bids_denoise developer entry points. Each target creates the venv on demand.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch; a bare "torch" would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-fast bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/bids-denoise "$$($(BIN)/python -c 'from bids_denoise.data import example_dataset; print(example_dataset())')" \
		demo-out participant -w demo-work
	@echo "Derivatives written to ./demo-out"

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 -m "not slow" tests

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_patch2self.py

clean:
	rm -rf $(VENV) demo-out demo-work .pytest_cache
