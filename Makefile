# make demo: set up .venv and run the embedded demo (CPU, no downloads).
# make demo-tools: the same for the tool demo (RL teaches a calculator).
# make test: set up .venv and run the whole test suite.
# make lock: re-resolve requirements/lock.txt from setup.py (then run `make test` on the new set).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LOCK := requirements/lock.txt
# pip itself is pinned too: an upstream pip release must not change what main installs.
PIP_VERSION := 26.3

.PHONY: install demo demo-tools test lock clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# Exactly the lock (every runtime and test dependency, pinned), then jaxpost itself without resolving
# anything further; check_lock.py fails if the venv holds anything the lock does not say.
$(VENV)/.installed: setup.py $(LOCK) scripts/check_lock.py | $(BIN)/activate
	$(BIN)/python -m pip install -q pip==$(PIP_VERSION)
	$(BIN)/pip install -q -r $(LOCK)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	$(BIN)/python scripts/check_lock.py $(LOCK)
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/python -m jaxpost.demo --workdir=runs/demo

demo-tools: install
	$(BIN)/python -m jaxpost.demo_tools --workdir=runs/demo_tools

test: install
	$(BIN)/python -m pytest -q -n 2 --dist worksteal -p no:cacheprovider --durations=15 tests

lock:
	bash scripts/lock.sh $(LOCK)

clean:
	rm -rf $(VENV) runs *.egg-info
