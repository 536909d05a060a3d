# The course's commands. `make demo` and `make test` are the two the README promises.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup models demo test test-fast sync check site lab clean

setup: $(STAMP)  ## create .venv with kuiper (editable) and the course and dev extras

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --progress-bar on -e ".[course,dev]"
	rm -f $(VENV)/.installed-* && touch $@

models: setup  ## export the model zoo to data/models (a few minutes; skips models already there)
	$(BIN)/python tools/zoo.py
	$(BIN)/python tools/llms.py

demo: models  ## classify the sample photos with MobileNetV2, then ask SmolLM2 a question
	$(BIN)/kuiper run data/models/mobilenet_v2.pnnx.param data/images/*.jpg
	$(BIN)/kuiper generate data/models/smollm2-135m-instruct-q4_1.gguf --prompt "What is the capital of France?" --max-tokens 48

# pytest exits 5 when a selection collects no test: not a failure of the course.
test: models  ## every test: package tests, nbval on the executed lessons, the site in a browser
	$(BIN)/python -m pytest -n 2 --dist loadfile || [ $$? -eq 5 ]

test-fast: models  ## the quick loop: everything but the slow tests
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "not slow" || [ $$? -eq 5 ]

sync: models  ## lessons -> kuiper/ modules, executed notebooks, student workbooks
	$(BIN)/python tools/sync.py

check: models  ## fail if any generated file is out of date
	$(BIN)/python tools/sync.py --check

site: models  ## render the lessons to static HTML in site/_build/html
	$(BIN)/python tools/site.py

# The workspace ($KUIPER_WORKSPACE, default workspace/) is the student's: created once, never overwritten.
lab: setup  ## copy the workbooks you do not have yet into workspace/, then open it in JupyterLab
	$(BIN)/kuiper lab create
	$(BIN)/jupyter lab "$${KUIPER_WORKSPACE:-workspace}"

clean:
	rm -rf site/_build .pytest_cache
