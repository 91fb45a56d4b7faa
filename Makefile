# The README's two commands. Each sets up .venv/ first (fast when nothing changed).
.PHONY: demo test setup lint

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/autoassist demo

test: setup
	.venv/bin/python -m pytest -q

lint: setup
	.venv/bin/ruff check .
