# The two commands of the README:
#   make pipeline   run the whole pipeline on the built-in sample, to a registered model in ./mlflow
#   make test       run the test suite
# Both create .venv and install the pinned dependencies first (requirements/constraints.txt).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# make test's pytest processes (pytest-xdist), each taking whole test files: the suite's tests spend
# half their time waiting on subprocesses (dvc, MLflow, kfp.local), so 2 finish sooner on 2 cores
TEST_WORKERS ?= 2
PIP_INSTALL := $(BIN)/python -m pip install --disable-pip-version-check -qq -c requirements/constraints.txt
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: setup test pipeline lock clean image-test

setup: $(VENV)/.installed

# The model server's KServe SDK (hsnet serve): its pins (pandas<3, psutil<6) clash with the project's,
# so it goes into an overlay folder that hsnet serve puts in front of the venv (serving/requirements.txt).
.PHONY: serve-env
serve-env: $(VENV)/serve/.installed

$(VENV)/serve/.installed: serving/requirements.txt $(VENV)/.installed
	rm -rf $(VENV)/serve
	$(BIN)/python -m pip install --disable-pip-version-check -qq --no-deps --target $(VENV)/serve -r serving/requirements.txt
	touch $@

$(VENV)/.installed: pyproject.toml requirements/constraints.txt
	@echo "installing hsnet and its pinned dependencies into $(VENV) (a few minutes the first time)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -e '.[all,test]'
	touch $@

test: setup serve-env
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25  # the slowest tests, for keeping CI under its time limit

# The whole pipeline on the built-in sample: draw it (byte-identical to what data.dvc records),
# then dvc repro import -> validate -> crop -> train -> evaluate -> register (local MLflow).
# A second run with nothing changed trains nothing: only register runs (the registry is outside DVC).
pipeline: setup
	@test -d data/raw/sample || $(BIN)/hsnet data sample --out data/raw/sample
	@$(BIN)/dvc status data.dvc | grep -q "modified" && { echo "data/raw differs from data.dvc: after an interrupted first run, draw the sample again ($(BIN)/hsnet data sample --out data/raw/sample); otherwise dvc pull, or dvc commit data.dvc if you changed it on purpose"; exit 1; } || true
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro
	@$(BIN)/python -m hsnet.summary runs

# The images built and run for real (needs a Docker engine; tests/container/test_image.py):
# build the three (tests/container/build.sh: tagged sha-<commit>, a stand-in base where no registry
# answers), run the whole pipeline in them with kfp.local's DockerRunner against moto + MLflow on
# loopback, the model server as the InferenceService runs it, and `hsnet --help` as the non-root
# user; then remove the images (Docker's build cache is kept, and trimmed to IMAGE_CACHE_KEEP).
IMAGE_CACHE_KEEP ?= 40GB
image-test: setup
	@refs=$$(mktemp); trap 'rm -f $$refs' EXIT; \
	PYTHON=$(BIN)/python bash tests/container/build.sh --refs $$refs || exit 1; . $$refs; \
	start=$$(date +%s); \
	HSNET_IMAGE_TEST=1 HSNET_TEST_IMAGE=$$IMAGE HSNET_TEST_SLIM_IMAGE=$$SLIM_IMAGE HSNET_TEST_SERVE_IMAGE=$$SERVE_IMAGE HSNET_TEST_COMMIT=$$COMMIT \
	  DOCKER=$$DOCKER $(BIN)/pytest -q --durations=0 -p no:cacheprovider tests/container; rc=$$?; \
	echo "image tests: $$(( $$(date +%s) - start )) s"; \
	$$DOCKER rmi $$IMAGE $$SLIM_IMAGE $$SERVE_IMAGE > /dev/null; \
	$$DOCKER builder prune -f --keep-storage $(IMAGE_CACHE_KEEP) > /dev/null || true; \
	exit $$rc

# Pin what is installed now (after changing dependencies in pyproject.toml).
lock: setup
	( echo "# Exact versions CI and the containers install (pip install -c requirements/constraints.txt ...)."; \
	  echo "# Regenerate after changing dependencies: make lock"; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v '^hsnet' ) > requirements/constraints.txt.tmp
	mv requirements/constraints.txt.tmp requirements/constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache
