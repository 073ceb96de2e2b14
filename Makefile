# Two entry points a newcomer needs: `make demo` and `make test`. Both create ./.venv on first use.
PYTHON ?= python3
VENV ?= .venv
# torch is installed first and on its own so an existing install is respected and pip does not pull a
# different build through a loose range. From PyPI on Linux this is the CUDA build (GBs of CUDA
# libraries); for the CPU-only build say TORCH_SPEC="torch==2.13.0 --index-url
# https://download.pytorch.org/whl/cpu" (or the CUDA index of your driver for GPUs).
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup demo test tools lint clean

$(BIN)/virnucpro-trt: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

setup: $(BIN)/virnucpro-trt

demo: setup
	$(BIN)/virnucpro-trt demo -o demo-out

# The tools are checked before setup (which installs GBs), so a machine without them is told at once.
tools:
	@command -v g++ >/dev/null && command -v cmake >/dev/null || \
		{ echo "make test needs g++ (AOTInductor engines) and cmake (the C++ host runtime)" >&2; exit 1; }

# Two pytest workers (pytest-xdist): one process left a core of two idle (it waits on child processes), so
# two finish in about two thirds of its time. Groups: tests/conftest.py. TEST_WORKERS=0 runs one process.
TEST_WORKERS ?= 2

test: tools setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) demo-out .pytest_cache .ruff_cache
