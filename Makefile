# Two commands on a fresh machine: `make demo` and `make test`. Everything else is optional.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

export SPARK_LOCAL_IP := 127.0.0.1
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install demo test unit lint bench docs airflow cluster-stop clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch==2.13.0 is the CPU build; pyspark is reinstalled last because other packages may ship pyspark/ files
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m airflow_bigdata_ai.demo --home $(CURDIR)/.demo --dags $(CURDIR)/dags_examples

test: install
	$(PY) -m pytest tests

unit: install
	$(PY) -m pytest tests/unit -q

lint: install
	$(VENV)/bin/ruff check airflow_bigdata_ai tests dags_examples benchmarks
	$(VENV)/bin/ruff format --check airflow_bigdata_ai tests dags_examples benchmarks
	$(VENV)/bin/mypy airflow_bigdata_ai

bench: install
	$(PY) -m benchmarks

docs: install
	$(VENV)/bin/sphinx-build -W --keep-going -b html docs docs/_build/html

cluster-stop: install
	$(PY) -m airflow_bigdata_ai cluster stop

clean:
	rm -rf $(VENV) build docs/_build .pytest_cache .mypy_cache .ruff_cache
