#!/usr/bin/env bash
# The README's main job: set up (idempotent), then turn an image into a video with `python -m svd_core img2vid`.
#   bash scripts/run.sh --checkpoint svd_xt.safetensors --image photo.png --out video.mp4 [img2vid options]
# Without --checkpoint it builds a tiny RANDOM model in the real layout so the whole path runs on any machine
# (its video is noise: real weights are one file away, see README "Model files").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2
has() { local flag=$1; shift; for a in "$@"; do [ "$a" = "$flag" ] && return 0; done; return 1; }
args=("$@")
mkdir -p out
if ! has --checkpoint "$@"; then
  demo=out/demo_tiny.safetensors
  [ -f "$demo" ] || .venv/bin/python -c "from svd_core.testing import make_tiny_checkpoint; make_tiny_checkpoint('$demo')"
  echo "no --checkpoint: using a tiny RANDOM model ($demo); pass --checkpoint svd_xt.safetensors for a real video" >&2
  args+=(--checkpoint "$demo")
fi
if ! has --image "$@"; then
  .venv/bin/python - <<'PY'
import numpy as np
from PIL import Image
y, x = np.mgrid[0:576, 0:1024]
rgb = np.stack([x / 1024, y / 576, 0.5 + 0.5 * np.sin(x / 60.0) * np.cos(y / 45.0)], -1)
Image.fromarray((rgb * 255).astype("uint8")).save("out/demo.png")
PY
  args+=(--image out/demo.png)
fi
has --out "$@" || args+=(--out out/video.mp4)
exec .venv/bin/python -m svd_core img2vid "${args[@]}"
