# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install redis run test lint schema bench clean

# torch first, pinned: 2.13.0 is a CPU build on local disk; unpinned pulls a multi-GB CUDA one.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	mkdir -p runs
	$(BIN)/engine run pipelines/support_triage.yaml --input pipelines/data/tickets.jsonl \
		--concurrency 1 \
		--output runs/support_triage.jsonl --trace
	@echo "results: runs/support_triage.jsonl"

# The Redis tests start a throwaway redis-server on 127.0.0.1; Debian packages it.
redis:
	@command -v redis-server >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }

test: $(STAMP) redis
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check engine tests plugins bench
	$(BIN)/mypy engine

schema: $(STAMP)
	$(BIN)/engine schema --builtin-only > schemas/pipeline.schema.json

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/overhead.py

clean:
	rm -rf $(VENV) runs .pytest_cache
