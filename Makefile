# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
# torch first, so that pip resolves our dependencies against it instead of
# pulling a CUDA build. Override for a GPU box, e.g. TORCH_SPEC="torch==2.13.0".
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.tl-lvlm-installed
OUT ?= out

.PHONY: demo test lint format bench gpu-check clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tl-lvlm --threads 1 demo --out $(OUT)/demo

# One worker per CPU (pytest-xdist; at most 4, each holds its own models), whole test files
# per worker so that module fixtures are built once.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n logical --maxprocesses 4 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python benchmarks/ablation_throughput.py --out $(OUT)/bench/ablation_throughput.json

# On a GPU machine (TORCH_SPEC of a CUDA build): CUDA checks, 7B-shape throughput, study time.
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py --out $(OUT)/gpu_check.json

clean:
	rm -rf $(VENV) $(OUT)
