# Two commands: `make run` and `make test`. Both set up .venv from a clean clone.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test setup clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

setup: $(STAMP)

# Installs the default model (smollm2-135m-instruct) if missing, then compares plain decoding
# with the best drafter on a sample prompt and prints both speeds and the speedup.
run: $(STAMP)
	$(BIN)/quickdraft pull smollm2-135m-instruct
	$(BIN)/quickdraft demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build src/*.egg-info
