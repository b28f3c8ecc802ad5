# The two commands of the README's quick start: `make demo` and `make test`.
# Each creates (or reuses) .venv, installs what changed, and makes sure a system
# Chromium is there. torch is pinned through constraints.txt so CPU machines take
# the local CPU wheel instead of the multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: setup demo test lint bench gpu-wheels

$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	@rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)
	@bash scripts/ensure_chromium.sh

demo: setup
	$(PY) -m websynthesis.demo

test: setup
	$(PY) -m pip check --disable-pip-version-check
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .

bench: setup  # the CPU benchmarks; see BENCHMARKS.md for each one's options
	$(PY) bench/bench_observation.py
	$(PY) bench/bench_search.py
	$(PY) bench/bench_generation.py
	$(PY) bench/bench_synthesis.py
	$(PY) bench/bench_env.py
	$(PY) bench/bench_train.py

gpu-wheels: setup  # what bench/gpu.py installs on a bare GPU machine (carry bench/.wheels)
	$(PY) -m pip wheel --no-deps -w bench/.wheels -r bench/gpu_requirements.txt
