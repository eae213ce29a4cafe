#!/usr/bin/env bash
# Quick start, offline on a CPU: installs what restore needs (not the test packages nor the LPIPS backbones:
# `bash scripts/bootstrap.sh` adds them), then restores the example images (box inpainting, PiGDM,
# the bundled Fashion-MNIST diffusion model) into ./restored.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --minimal
exec .venv/bin/restore inpaint --model fmnist-ddpm-32 --method pigdm --batch-size 8 --compare examples/fmnist -o restored "$@"
