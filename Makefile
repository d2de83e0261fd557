# The two commands of the README:
#   make compare   sets up .venv if missing, then runs the main job on the embedded digit domains
#   make test      sets up .venv if missing, then runs the whole test suite
# PYTHON picks the interpreter that creates the venv (3.10+).
# TORCH is what pip installs first: a pinned version (default), or a path to a wheel file.
# TORCH_INDEX (optional) is a package index to take torch from: on a Linux machine without a GPU, point it
# at PyTorch's CPU-only wheel index (its URL is on PyTorch's install page) to get the ~200 MB CPU build
# instead of the CUDA build and its ~20 extra wheels that the default index serves.

PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
TORCH       ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: env compare run test results figures bench study clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: an unpinned torch pulls several GB of CUDA wheels
	$(PY) -m pip install $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	$(PY) -m pip install -e ".[dev,notebooks,triton]"
	touch $@

env: $(VENV)/.installed

compare: env
	$(PY) -m fedmoe_da compare

run: env
	$(PY) -m fedmoe_da run

# the suite on two pytest-xdist workers, but the tests that start Jupyter kernels (marker kernels) in one
# process: kernels started at once from several processes can draw the same port and a notebook hangs
# (fedmoe_da/figures.py). Then the tests that compare two implementations again on the vector kernels of a CPU
# without AVX-512 (their tolerances must not depend on which kernels a CPU takes: docs/ARCHITECTURE.md §8).
test: env
	$(PY) -m pytest -n 2 -m "not kernels" --durations=20
	$(PY) -m pytest -m kernels --durations=10
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 $(PY) -m pytest -q -n 2 -m equivalence

# the README's results block: rerun the default comparison over 3 seeds into results/compare, check the rerun
# against the committed table (accuracies within their band, integer data exact: fedmoe_da/reproduce.py),
# then copy its table into the README; and the smoke comparison CI reruns (tests/test_packaging.py)
results: env
	mkdir -p runs && cp results/compare/comparison.csv runs/committed_comparison.csv
	$(PY) -m fedmoe_da compare --seeds 3 --out results/compare --no-progress
	$(PY) -m fedmoe_da.reproduce runs/committed_comparison.csv results/compare/comparison.csv
	$(PY) -m fedmoe_da compare --smoke --seeds 3 --strategies fedmoe_da,fedavg --out results/compare_smoke --no-progress
	$(PY) -c "from fedmoe_da.results import update_readme; update_readme('README.md', 'results/compare/comparison.md')"

# paper_figures/: every registered figure at full size (each notebook that draws one runs once, headless), and its
# README.md. The runs the notebooks train go to a new folder, so nothing cached by older code is reused;
# FIGURE_RUNS=runs/course reuses the notebooks' own cache. Smoke-sized: python -m fedmoe_da.figures --smoke
FIGURE_RUNS ?= build/figure-runs/$(shell date -u +%Y%m%dT%H%M%S)
figures: env
	$(PY) -m fedmoe_da.figures --runs $(FIGURE_RUNS)

bench: env
	$(PY) benchmarks/sim_throughput.py

study: env
	$(PY) benchmarks/method_study.py

clean:
	rm -rf $(VENV) runs .pytest_cache
