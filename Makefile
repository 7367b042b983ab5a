# recjax: `make demo` and `make test` each set everything up on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# Accelerator wheels on a TPU VM or GPU node: make install JAX_EXTRA=tpu|cuda12
JAX_EXTRA ?=

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock recjax/ops/csr_spmm.cc
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[test]'
	$(if $(JAX_EXTRA),$(BIN)/python -m pip install -q "jax[$(JAX_EXTRA)]==$$(sed -n 's/^jax==//p' requirements.lock)")
	$(BIN)/python -m recjax.ops.build
	touch $(STAMP)

demo: install
	rm -rf runs/demo
	$(BIN)/python -m recjax.serve.demo --workdir=runs/demo

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS) tests

clean:
	rm -rf runs .pytest_cache recjax/ops/_csr_spmm.so
