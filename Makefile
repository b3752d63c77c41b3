# Two commands do it all on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test bench train clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the requirements change, so a second `make test` is fast. The package itself goes in
# editable (`pip install -e .`), so `import brainseg` and the brainseg-* commands work from anywhere.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) app.py

# One worker a core (pytest-xdist); a file's tests stay together, so its module fixtures (a train.py run) are made once.
test: $(STAMP)
	$(PY) -m pytest -q -n auto --dist loadfile tests

bench: $(STAMP)
	$(PY) -m brainseg.bench

train: $(STAMP)
	PYTHON=$(PY) bash scripts/train_models.sh

clean:
	rm -rf $(VENV) .pytest_cache
