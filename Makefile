# bids_denoise developer entry points. Each target creates the venv on demand.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned: an unpinned "torch" takes whatever is newest. From PyPI, torch==2.13.0 on
# x86_64 Linux is the multi-GB CUDA build (where pip is configured with a local CPU wheel, as on
# our build machines, pip takes that one). TORCH_INDEX_URL picks the wheel index, e.g.
#   make test TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu     (CPU-only, ~200 MB)
#   make test TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126   (CUDA 12.6)
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-fast test-container test-slurm bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(if $(TORCH_INDEX_URL),--index-url "$(TORCH_INDEX_URL)") "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/bids-denoise "$$($(BIN)/python -c 'from bids_denoise.data import example_dataset; print(example_dataset())')" \
		demo-out participant -w demo-work
	@echo "Derivatives written to ./demo-out"

# Every test: this -m replaces the default -m "not slow" of pyproject.toml's addopts (the gpu,
# container and slurm tests skip themselves without their resource).
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -m "slow or not slow" tests

# What plain `pytest` runs: the default selection (-m "not slow") of pyproject.toml's addopts.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 tests

# Docker image: build (dockerd and the base image are set up when missing), run the example
# dataset in it and compare with a host run. Steps and settings: scripts/ci/test_container.sh
# (all steps by default; e.g. make test-container CONTAINER_STEPS="build smoke compare").
CONTAINER_STEPS ?=
test-container: $(STAMP)
	HOST_PYTHON=$(abspath $(BIN))/python scripts/ci/test_container.sh $(CONTAINER_STEPS)

# Slurm: start a single-node test cluster (apt-installs slurm-wlm and munge when missing;
# scripts/ci/start_slurm.sh), run the example dataset through the SLURM and SLURMGraph plugins
# and the job-array recipe, compare with a MultiProc run, stop the cluster again.
# Steps and settings: scripts/ci/test_slurm.sh.
test-slurm: $(STAMP)
	PYTHON=$(abspath $(BIN))/python bash scripts/ci/test_slurm.sh

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_patch2self.py

clean:
	rm -rf $(VENV) demo-out demo-work .pytest_cache
