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
	# torch==2.13.0 is the CPU build. Nothing may ship a second copy of pyspark/ (pyspark-client does): check it.
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -c "import pyspark, sys; v = pyspark.__version__; sys.exit(0 if v.startswith('4.3') else f'pyspark {v} != 4.3.x')"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m airflow_bigdata_ai.examples.demo --home $(CURDIR)/.demo --dags $(CURDIR)/dags_examples

# The browser test drives Debian's chromium (not a Playwright-downloaded browser); install it when missing.
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; \
	else \
		echo "$(CHROMIUM) is missing: run 'sudo apt-get install -y chromium' (the browser test skips without it)"; \
	fi

test: install $(CHROMIUM)
	$(PY) -m pytest tests --durations=30

unit: install
	$(PY) -m pytest tests/unit -q

lint: install
	$(VENV)/bin/ruff check airflow_bigdata_ai tests dags_examples benchmarks
	$(VENV)/bin/ruff format --check airflow_bigdata_ai tests dags_examples benchmarks
	$(VENV)/bin/mypy airflow_bigdata_ai benchmarks

bench: install
	$(PY) -m benchmarks

docs: install
	$(VENV)/bin/sphinx-build -W --keep-going -b html docs docs/_build/html

# Airflow's UI with the example DAGs on http://127.0.0.1:$(AIRFLOW_PORT) (airflow standalone; Ctrl+C stops it).
AIRFLOW_PORT ?= 8080
airflow: install
	mkdir -p $(CURDIR)/.airflow
	AIRFLOW_HOME=$(CURDIR)/.airflow \
	AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags_examples \
	AIRFLOW__CORE__LOAD_EXAMPLES=False \
	AIRFLOW__API__HOST=127.0.0.1 \
	AIRFLOW__API__PORT=$(AIRFLOW_PORT) \
	AIRFLOW__API__BASE_URL=http://127.0.0.1:$(AIRFLOW_PORT) \
	AIRFLOW__CORE__EXECUTION_API_SERVER_URL=http://127.0.0.1:$(AIRFLOW_PORT)/execution/ \
	$(VENV)/bin/airflow standalone

cluster-stop: install
	$(PY) -m airflow_bigdata_ai cluster stop

clean:
	rm -rf $(VENV) build docs/_build .pytest_cache .mypy_cache .ruff_cache
