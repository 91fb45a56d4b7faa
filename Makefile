# The README's two commands. Each sets up .venv/ first (fast when nothing changed).
.PHONY: demo test test-transformers5 setup lint

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/autoassist demo

# -P: the repo root stays off sys.path, where its kernels/ folder (autoassist.kernels) would
# shadow PyPI's kernels, which transformers 5 imports (tests/conftest.py refuses that run)
test: setup
	.venv/bin/python -P -m pytest -q --durations=15

# AutoAssistTrainer's tests under transformers 5 (.venv has 4.x): CI runs it after `test`
test-transformers5: setup
	bash scripts/test_transformers5.sh

lint: setup
	.venv/bin/ruff check .
