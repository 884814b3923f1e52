# amr_jax: `make demo` and `make test` each work alone on a fresh machine.
SHELL := /bin/bash
PY312 ?= $(shell for p in "$$HOME/.pyenv/versions/3.12.1/bin/python" "$$(command -v python3.12)"; do [ -x "$$p" ] && { echo "$$p"; break; }; done)
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: venv demo test clean distclean

$(VENV)/.installed: requirements.txt pyproject.toml
	@if [ -z "$(PY312)" ]; then echo "ERROR: Python 3.12 not found (looked for ~/.pyenv/versions/3.12.1/bin/python and python3.12 on PATH); jax 0.12 needs Python >= 3.12" >&2; exit 1; fi
	@echo "creating $(VENV) from $(PY312)"
	$(PY312) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) launch/demo.py --workdir=demo_out

test: venv
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest -q -n 2 --dist loadfile tests

clean:  ## the demo's outputs (make demo reuses finished phases otherwise)
	rm -rf demo_out

distclean: clean
	rm -rf $(VENV)
