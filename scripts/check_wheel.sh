#!/usr/bin/env bash
# The package as a user gets it: build the wheel, install it with its dependencies into a fresh
# virtual environment, and import and run it from outside the repo (so the source tree cannot
# stand in for a file the wheel forgot). Needs .venv/ (scripts/setup.sh) for the build.
# pip's cache is reused; PIP_CONSTRAINT keeps torch at the CPU pin of constraints.txt.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
start=$SECONDS
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

export PIP_CONSTRAINT="$root/constraints.txt" PIP_DISABLE_PIP_VERSION_CHECK=1
# built with .venv's setuptools (no isolated build env to set up: faster, and no download)
env -u PIP_BUILD_CONSTRAINT .venv/bin/python -m pip wheel -q --no-deps --no-build-isolation \
  -w "$tmp/dist" .
wheel=$(ls "$tmp"/dist/autoassist-*.whl)
"${PYTHON:-python3}" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q "$wheel"

cd "$tmp"
"$tmp/venv/bin/python" - "$tmp/venv" <<'EOF'
import sys
from importlib.metadata import distribution, version
from pathlib import Path

import autoassist

venv = Path(sys.argv[1]).resolve()
assert Path(autoassist.__file__).resolve().is_relative_to(venv), autoassist.__file__
assert version("autoassist") == autoassist.__version__, (version("autoassist"), autoassist.__version__)
files = {str(f) for f in distribution("autoassist").files}
for needed in ("autoassist/py.typed", "autoassist/kernels/__init__.py",
               "autoassist/pipelines/dataloader.py"):
    assert needed in files, f"the wheel lacks {needed}"
assert any(f.endswith("licenses/LICENSE") for f in files), "the wheel lacks its LICENSE"
print(f"wheel: autoassist {autoassist.__version__} imports from {venv}")
EOF
"$tmp/venv/bin/autoassist" --help > "$tmp/help.txt"
grep -q "usage: autoassist" "$tmp/help.txt"
test "$("$tmp/venv/bin/autoassist" --version)" = "$("$tmp/venv/bin/python" -c 'import autoassist; print(autoassist.__version__)')"
echo "wheel: built, installed into a fresh venv, imported and run in $((SECONDS - start)) s"
