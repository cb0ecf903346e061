# The two commands of the README:
#   make pipeline   run the whole pipeline on the built-in sample, to a registered model in ./mlflow
#   make test       run the test suite
# Both create .venv and install the pinned dependencies first (requirements/constraints.txt).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP_INSTALL := $(BIN)/python -m pip install --disable-pip-version-check -qq -c requirements/constraints.txt
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false

.PHONY: setup test pipeline lock clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements/constraints.txt
	@echo "installing hsnet and its pinned dependencies into $(VENV) (a few minutes the first time)"
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -e '.[all,test]'
	touch $@

test: setup
	$(BIN)/pytest -q

# Pin what is installed now (after changing dependencies in pyproject.toml).
lock: setup
	( echo "# Exact versions CI and the containers install (pip install -c requirements/constraints.txt ...)."; \
	  echo "# Regenerate after changing dependencies: make lock"; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v '^hsnet' ) > requirements/constraints.txt.tmp
	mv requirements/constraints.txt.tmp requirements/constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache
