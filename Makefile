# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.vtr-installed
# torch 2.14.1 + torchvision 0.29.1 lie on disk on the project's x86_64 machines; HF video processors need torchvision.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export WANDB_MODE=disabled
export TOKENIZERS_PARALLELISM=false

.PHONY: demo test install clean

# The distribution was called vtr before it became visual-token-reduction: an old editable install is dropped
# first, so the two do not both own the vtr command and entry points (pip skips it when it is absent).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(TORCH_PINS) 2>&1 | grep -v "is ignored: it is neither" || true
	$(BIN)/python -c "import torch, torchvision" 
	$(PIP) uninstall -y vtr 2>&1 | grep -v "not installed" || true
	$(PIP) install -e '.[eval,dev]' 2>&1 | grep -v "is ignored: it is neither" || true
	$(BIN)/python -c "import vtr, transformers, lmms_eval, pytest"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/vtr demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q

clean:
	rm -rf $(VENV) build *.egg-info
