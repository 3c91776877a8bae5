# torch-lookahead: the two commands of the quick start are `make demo` and `make test`.
# Two packages: the library (., torch-lookahead) and its lab (lab/, torch-lookahead-lab, the
# `torch-lookahead` command); `make demo` installs both, `make test` tests both.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch is pinned through a constraints file so that no install can pull a different (CUDA) build.
PIN := -c constraints.txt torch==2.13.0
export OMP_NUM_THREADS ?= 1

.PHONY: demo test test-slow test-oldest lint typecheck docs bench dist clean

$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# The library (.) and the lab (lab/, the torch-lookahead command), both editable.
$(VENV)/.demo-installed: $(VENV)/bin/python pyproject.toml lab/pyproject.toml constraints.txt
	$(PIP) install --quiet $(PIN) -e . -e ./lab
	touch $@

# timm's Lookahead is tested against, but timm needs torchvision, which would pull another torch:
# its pure-Python files are enough for timm/optim/lookahead.py, so they go in without dependencies.
$(VENV)/.dev-installed: $(VENV)/bin/python pyproject.toml lab/pyproject.toml constraints.txt
	$(PIP) install --quiet $(PIN) -e '.[dev,integrations,docs]' -e ./lab
	$(PIP) install --quiet --no-deps timm==1.0.31
	touch $@

$(VENV)/.bench-installed: $(VENV)/bin/python pyproject.toml constraints.txt
	$(PIP) install --quiet $(PIN) -e '.[bench]'
	$(PIP) install --quiet --no-deps timm==1.0.31
	touch $@

# --against: the run says where its numbers differ from the committed report, if they do.
demo: $(VENV)/.demo-installed
	$(VENV)/bin/torch-lookahead demo --against reports/demo

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check src lab tests benchmarks examples
	$(VENV)/bin/ruff format --check src lab tests benchmarks examples

typecheck: $(VENV)/.dev-installed
	$(VENV)/bin/mypy

test: lint typecheck
	$(VENV)/bin/pytest -n 2 -m "not slow"

test-slow: $(VENV)/.dev-installed
	$(VENV)/bin/pytest -m slow

# The docs build in the dev environment (its install includes the docs extra): after `make test`
# it installs nothing, and never a second torch.
docs: $(VENV)/.dev-installed
	$(VENV)/bin/mkdocs build --strict

# The benchmark harness is a script of the repository, not part of the installed package.
bench: $(VENV)/.bench-installed
	$(PY) benchmarks/bench.py

# The oldest torch the library declares (pyproject.toml's `dependencies`), in a venv of its own:
# the core and distributed tests, without the lab and integrations extras. Not part of `make test`
# or CI. torch from PyPI on Linux is the CUDA build (several GB); the package goes in with
# --no-deps so that it cannot pull another torch.
OLDEST_VENV := .venv-oldest
OLDEST_TORCH := torch==2.6.0

$(OLDEST_VENV)/.installed: pyproject.toml
	python3 -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(OLDEST_VENV)/bin/python -m pip install --quiet $(OLDEST_TORCH) 'pytest>=8' \
		'pytest-xdist>=3.5' 'hypothesis>=6.100' 'numpy>=1.26'
	$(OLDEST_VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $@

test-oldest: $(OLDEST_VENV)/.installed
	$(OLDEST_VENV)/bin/pytest -n 2 -m "not slow" \
		--ignore=tests/lab --ignore=tests/integrations

# The wheels and sdists of both packages, into dist/ (the library's wheel holds no lab code).
dist: $(VENV)/bin/python
	$(PIP) install --quiet build
	$(PY) -m build --outdir dist .
	$(PY) -m build --outdir dist lab

clean:
	rm -rf $(VENV) site dist .pytest_cache .mypy_cache .ruff_cache
