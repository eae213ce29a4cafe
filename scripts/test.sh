#!/usr/bin/env bash
# The test command: installs what is missing, then runs the whole suite (CPU, no network).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest -q "$@"
