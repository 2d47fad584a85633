# The two commands that do all set-up on a fresh machine:
#   make run    a search on the embedded digits data set
#   make test   the test suite
# Both create or reuse ./.venv.
.PHONY: run test venv benchmark

venv:
	@bash scripts/ensure-venv.sh

run: venv
	.venv/bin/certevo launch

test: venv
	.venv/bin/python -m pytest -q

benchmark: venv
	.venv/bin/python benchmarks/evaluate.py
