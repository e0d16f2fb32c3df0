# veil: two commands on a fresh machine.
#
#   make demo   create .venv (CPU torch first, then veil with the serve and privacy extras) and run
#               `veil demo`: sample photos obfuscated here, only activations sent to a Triton server
#               started on loopback, boxes + pictures + report in runs/demo/, server stopped.
#   make test   create the same .venv with every extra and what the tests need, and run the README's
#               test command (python -m pytest -q).
#   make lint   ruff, the import-layer contracts (.importlinter) and mypy, in the same .venv.
#
# Both are idempotent (a stamp file per install step; nothing is reinstalled unless pyproject.toml
# changes) and work offline once the packages are installed. Variables:
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu   where torch comes from (default: pip's index)
#   PYTHON=python3.11   the interpreter that creates .venv        DEMO_OUT=runs/demo   demo output

PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
TORCH_INDEX_URL ?=
DEMO_OUT ?= runs/demo
DEMO_EXTRAS := serve,privacy
ALL_EXTRAS := serve,privacy,k8s,notebook,dev
# Kubernetes 1.21 schemas ship only with kubernetes-validate <= 1.28 (which needs pkg_resources), so it
# lives apart from the venv's current release; `veil k8s validate` and the tests run it from there.
KV_LEGACY := build/kubernetes-validate-1.28
# The NetApp DataOps Toolkit's source only (its heavy dependencies are not needed): the tests read its
# real function signatures.
DATAOPS := build/netapp-dataops-k8s

PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check

.PHONY: help demo test lint install install-all clean-venv

help:
	@sed -n '2,14p' Makefile | sed 's/^# \{0,1\}//'

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first: a CPU build (a looser spec could pull a multi-GB CUDA build).
$(VENV)/.stamp-torch: | $(PY)
	$(PIP) install -q "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	@touch $@

$(VENV)/.stamp-demo: pyproject.toml $(VENV)/.stamp-torch
	$(PIP) install -q -e ".[$(DEMO_EXTRAS)]"
	@touch $@

$(VENV)/.stamp-all: pyproject.toml $(VENV)/.stamp-torch
	$(PIP) install -q -e ".[$(ALL_EXTRAS)]"
	@touch $@ $(VENV)/.stamp-demo

$(KV_LEGACY)/kubernetes_validate: | $(PY)
	$(PIP) install -q --no-deps --target $(KV_LEGACY) kubernetes-validate==1.28.0 "setuptools<81"

$(DATAOPS)/netapp_dataops: | $(PY)
	$(PIP) install -q --no-deps --target $(DATAOPS) netapp-dataops-k8s==3.1.0

install: $(VENV)/.stamp-demo
install-all: $(VENV)/.stamp-all $(KV_LEGACY)/kubernetes_validate $(DATAOPS)/netapp_dataops

demo: install
	$(VENV)/bin/veil demo --out $(DEMO_OUT)

test: install-all
	. $(VENV)/bin/activate && python -m pytest -q

# ruff (lint + format check), the import-layer contracts and mypy: .ci/run runs this before the tests.
lint: install-all
	. $(VENV)/bin/activate && .ci/lint

clean-venv:
	rm -rf $(VENV) $(KV_LEGACY) $(DATAOPS)
