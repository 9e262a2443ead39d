# make demo: set up .venv and run the embedded demo (CPU, no downloads).
# make test: set up .venv and run the whole test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: setup.py | $(BIN)/activate
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/python -m jaxpost.demo --workdir=runs/demo

test: install
	$(BIN)/python -m pytest -q -n 2 --dist worksteal -p no:cacheprovider --durations=15 tests

clean:
	rm -rf $(VENV) runs *.egg-info
