# The two commands of the README:
#   make compare   sets up .venv if missing, then runs the main job on the embedded digits
#   make test      sets up .venv if missing, then runs the whole test suite
# PYTHON picks the interpreter that creates the venv (3.10+).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0

.PHONY: env compare run test smoke-notebooks bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: an unpinned torch pulls several GB of CUDA wheels
	$(PY) -m pip install "$(TORCH)"
	$(PY) -m pip install -e ".[dev,notebooks,triton]"
	touch $@

env: $(VENV)/.installed

compare: env
	$(PY) -m fedmoe_da compare

run: env
	$(PY) -m fedmoe_da run

test: env
	$(PY) -m pytest

bench: env
	$(PY) benchmarks/sim_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
