#!/usr/bin/env bash
# AutoAssistTrainer's tests under transformers 5 (CI's second transformers; .venv has 4.x, held
# there by constraints.txt). .venv-hf5 is a venv layered on .venv's packages (a .pth line puts
# .venv's site-packages after its own) with transformers 5 and what it needs newer
# (huggingface_hub, tokenizers, PyPI kernels) installed on top: no second torch, seconds to
# make. Needs .venv (scripts/setup.sh). With no package index to reach, it skips, saying so.
# AUTOASSIST_TRANSFORMERS5 picks the version (default below).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
version=${AUTOASSIST_TRANSFORMERS5:-5.25.0}
venv="$root/.venv-hf5"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_RETRIES=${PIP_RETRIES:-2} PIP_TIMEOUT=${PIP_TIMEOUT:-20}
# constraints.txt's pins (torch's CPU build) less its transformers line, which holds .venv at 4.x
pins=$(mktemp)
trap 'rm -f "$pins"' EXIT
grep -v '^transformers' constraints.txt > "$pins"

base=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
key="$version $base $(cat pyproject.toml constraints.txt "$0" | sha256sum | cut -d' ' -f1)"
stamp="$venv/.autoassist-installed"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$key" ]; then
  rm -rf "$venv"
  .venv/bin/python -m venv --without-pip "$venv"
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
  echo "$base" > "$site/autoassist-base-venv.pth"
  pip=(.venv/bin/python -m pip --python "$venv/bin/python")
  # pip names .venv's packages it does not manage (outside this venv) as conflicts: not ours
  if ! "${pip[@]}" install -q -c "$pins" "transformers==$version" 2> "$venv/pip.log"; then
    if ! "${pip[@]}" index versions transformers > /dev/null 2>&1; then
      echo "test_transformers5: SKIPPED, no package index reachable to install transformers" \
        "$version (AutoAssistTrainer stays tested with .venv's transformers 4 only)" >&2
      rm -rf "$venv"
      exit 0
    fi
    cat "$venv/pip.log" >&2
    exit 1
  fi
  "${pip[@]}" install -q --no-deps --no-build-isolation -e . 2>> "$venv/pip.log" ||
    { cat "$venv/pip.log" >&2; exit 1; }
  echo "$key" > "$stamp"
fi
"$venv/bin/python" -P -c 'from importlib.metadata import version as v
print("test_transformers5: transformers", v("transformers"), "kernels", v("kernels"))'
# -P: the repo root off sys.path (its kernels/ folder would shadow PyPI's kernels)
"$venv/bin/python" -P -m pytest -q tests/test_hf.py \
  tests/test_examples.py::test_hf_trainer_example_shrinks
