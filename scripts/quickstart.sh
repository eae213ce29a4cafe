#!/usr/bin/env bash
# Quick start, offline on a CPU: installs what is missing, then restores the example photos
# (box inpainting, PiGDM, the analytic Gaussian prior) into ./restored. Under a minute once installed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/restore inpaint --model gaussian --method pigdm --compare examples/ -o restored "$@"
