# bayeslmm: two commands on a fresh machine: `make demo` and `make test`.
# The venv must come from Python >= 3.12: the machine's default python3 (3.11) silently gets PyMC 5.
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# First Python >= 3.12 found: $PYTHON, then 3.12, then 3.13 (on PATH or in pyenv).
FIND_PY = pyenv_bins() { ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/$$1*/bin/python3 2>/dev/null | sort -V; }; \
	for c in "$$PYTHON" python3.12 $$(pyenv_bins 3.12) python3.13 $$(pyenv_bins 3.13) python3; do \
	  [ -n "$$c" ] || continue; p=$$(command -v "$$c" 2>/dev/null) || continue; \
	  "$$p" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null && { echo "$$p"; break; }; \
	done

.PHONY: chromium demo test test-fast bench bench-big validate install clean notebooks

$(STAMP): pyproject.toml
	@py=$$($(FIND_PY)); \
	if [ -z "$$py" ]; then echo "error: bayeslmm needs Python >= 3.12 (PyMC 6 / ArviZ 1). None found on PATH or in pyenv; install one (e.g. 'pyenv install 3.12') or run 'make PYTHON=/path/to/python3.12 demo'." >&2; exit 1; fi; \
	echo "Creating $(VENV) with $$py ($$($$py --version))"; \
	rm -rf $(VENV) && "$$py" -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,bench]"
	@$(PY) -c 'from bayeslmm.paths.collapsed_density import compile_density as c; print(f"Compiled the collapsed-likelihood kernel and model density in {c():.1f} s (once per install; numba caches them)")'
	@$(PY) -c 'from bayeslmm.paths.quadrature import compile_kernels as c; from bayeslmm.paths.quadrature_density import compile_density as d; print(f"Compiled the GLMM quadrature kernels and model density in {c() + d():.1f} s (once per install; numba caches them)")'
	@$(PY) -c 'from bayeslmm.paths.crossed_kernel import compile_kernels as c; from bayeslmm.paths.crossed_density import compile_density as d; print(f"Compiled the crossed collapsed-likelihood kernels and model density in {c() + d():.1f} s (once per install; numba caches them)")'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m bayeslmm.demo --out out/demo

# Two pytest workers (pytest-xdist), each test file in one worker (its module fixtures built once):
# most of a test's time is PyTensor compiling a model, one core each, so the other core sampled or
# compiled meanwhile (full suite, warm caches, 2 cores: 699 s -> 460 s). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: $(STAMP) chromium
	$(PY) -m pytest -q -p no:cacheprovider --durations=30 -n $(TEST_WORKERS) --dist loadfile -m "not validate" tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

bench: $(STAMP)
	$(PY) bench/run.py --out bench/results
	$(PY) bench/first_fit.py --out bench/results
	OPENBLAS_NUM_THREADS=1 $(PY) bench/kinship.py --out bench/results

validate: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m validate tests
	$(PY) -m bayeslmm.validation --out validation/results

clean:
	rm -rf $(VENV) out .pytest_cache

# Headless Chromium renders the HTML report in tests/test_report.py (Debian package; idempotent, quiet).
chromium:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
	  || echo "warning: could not install chromium; tests/test_report.py will skip its rendering check" >&2

# Data bigger than memory (issue 16): statistics pass + sampling from a Parquet directory. The issue's size is
# BIG_ROWS=10000000 BIG_GROUPS=50000 (about 3 GB of Parquet work in /tmp); the default is a fifth of it.
BIG_ROWS ?= 2000000
BIG_GROUPS ?= 10000
bench-big: $(STAMP)
	$(PY) bench/bigdata.py --rows $(BIG_ROWS) --groups $(BIG_GROUPS) --reps 1 --out bench/results

# Re-execute the teaching notebooks and store them with their outputs (after changing notebooks/build_notebooks.py
# or merging new notebooks); tests/test_notebooks.py checks that the stored ones are current and executed.
notebooks: $(STAMP)
	$(PY) notebooks/build_notebooks.py --execute
