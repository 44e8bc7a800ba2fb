# The two commands of the README: `make run` (set up, then train the main job on an embedded dataset)
# and `make test` (set up, then run the whole test suite). Everything installs into .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch (a local wheel on our machines; from PyPI elsewhere). Override for CUDA builds.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup run test lint format bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev,kernels]"
	touch $@

run: setup
	$(VENV)/bin/flows fit --config configs/demo.yaml

test: setup
	$(PY) -m pytest -n 2 --dist loadgroup

lint: setup
	$(VENV)/bin/ruff format --check . && $(VENV)/bin/ruff check .

format: setup
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) benchmarks/bench_peers.py

clean:
	rm -rf $(VENV) runs
