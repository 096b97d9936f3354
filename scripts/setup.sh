#!/usr/bin/env bash
# Set up shardguard in ./.venv on a fresh machine.
#   bash scripts/setup.sh        the tool itself
#   bash scripts/setup.sh --dev  plus what the test suite needs (pytest, notebook, Hugging Face
#                                datasets, Ray for the engine-equality test, and Debian's
#                                chromium for the HTML report test)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# Pin torch first: an open range pulls a multi-GB CUDA build; 2.13.0 is a CPU build on the
# project's machines (elsewhere add --index-url https://download.pytorch.org/whl/cpu for one).
python -m pip install -q "torch==2.13.0"
if [ "${1:-}" = "--dev" ]; then
  python -m pip install -q -e ".[dev,notebook,hf,ray]"
  if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
      echo "note: chromium not found and cannot be installed here; the HTML report test will be skipped" >&2
    fi
  fi
else
  python -m pip install -q -e .
fi
