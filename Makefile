# Two commands do all set-up: `make demo` and `make test` create .venv if missing and
# install pcs with pinned versions (constraints.txt) before running.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= runs

.PHONY: install demo regression test bench clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[experiments,test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.sweep --workdir=$(WORKDIR)/demo

regression: $(STAMP)
	$(PY) -m experiments.regression --workdir=$(WORKDIR)/regression

test: $(STAMP)
	PCS_NOTEBOOK_STEPS=100 $(PY) -m pytest -q -n 2 --durations=10 tests --nbmake notebooks/quickstart.ipynb

bench: $(STAMP)
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) $(WORKDIR) *.egg-info
