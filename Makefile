# Two commands do all set-up: `make demo` and `make test` create .venv if missing and
# install pcs with pinned versions (constraints.txt) before running. `.wheels` caches the
# core dependencies as wheels, so tests/test_wheel.py installs the built wheel offline.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= runs

.PHONY: install demo regression quality test check docs bench bench-sparse clean

$(STAMP): setup.cfg setup.py pyproject.toml constraints.txt $(wildcard csrc/*.cc csrc/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[experiments,test,docs]'
	$(PY) -m pip download --quiet -d .wheels -c constraints.txt jax jaxlib optax numpy
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.vision.sweep --workdir=$(WORKDIR)/demo --readme=README.md

regression: $(STAMP)
	$(PY) -m experiments.regression.main --workdir=$(WORKDIR)/regression --readme=README.md

# The quality benchmark (hours on 2 cores; resumable: finished runs in quality/runs.jsonl are
# skipped). One worker per core; QUALITY.md and quality/ are rewritten as results come.
WORKERS ?= 2
quality: $(STAMP)
	mkdir -p $(WORKDIR)
	for w in $$(seq 0 $$(($(WORKERS) - 1))); do \
	  $(PY) -m experiments.quality.main --workdir=$(WORKDIR)/quality --record=quality \
	      --num_workers=$(WORKERS) --worker=$$w > $(WORKDIR)/quality_worker$$w.log 2>&1 & \
	done; wait

test: $(STAMP)
	PCS_NOTEBOOK_STEPS=100 $(PY) -m pytest -q -n 2 --dist worksteal --durations=10 tests --doctest-modules pcs \
	    --nbmake notebooks/quickstart.ipynb

check: $(STAMP)
	$(VENV)/bin/ruff check pcs experiments benchmarks tests docs
	$(VENV)/bin/mypy pcs

docs: $(STAMP)
	rm -rf docs/_build
	$(PY) -m sphinx -W --keep-going -b html -q docs docs/_build/html

bench: $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[bench]'
	$(PY) -m benchmarks

# Sparse inference only, quick (whole models at 95%): appends the run, with its CPU, to
# benchmarks/sparse_runs.jsonl and rewrites BENCHMARKS.md's block of every recorded run.
bench-sparse: $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[bench]'
	$(PY) -m benchmarks.sparse_inference --quick --inference_repeats=10

clean:
	rm -rf $(VENV) $(WORKDIR) *.egg-info .wheels docs/_build dist
