#!/usr/bin/env bash
# Sets up .venv for running and testing on a fresh machine (idempotent).
#   bash scripts/setup.sh          # engine + node pack + test dependencies
# The torch pins below are for this test environment only (ComfyUI needs torchvision *and* torchaudio, whose
# registry builds are tied to one torch); the package itself never pins torch: users bring their own.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! .venv/bin/python -c "import torch, torchvision, torchaudio; assert torch.__version__.startswith('2.9.1')" 2>/dev/null; then
  "$PIP" install -q "torch==2.9.1" "torchvision==0.24.1"
  "$PIP" install -q "torch==2.9.1" "torchaudio==2.9.*"
fi
# extras: test + every optional feature, so no test skips in CI for a missing package
EXTRAS=$(.venv/bin/python - <<'PYEOF'
import tomllib
with open("pyproject.toml", "rb") as f:
    print(",".join(tomllib.load(f)["project"].get("optional-dependencies", {})))
PYEOF
)
"$PIP" install -q -e ".[${EXTRAS}]"
# system packages the tests use (browser for the GUI / voting-page tests, ...), one per line
if [ -s scripts/apt-packages.txt ]; then
  missing=$(while read -r p; do [ -z "$p" ] || dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done < scripts/apt-packages.txt)
  if [ -n "$missing" ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
  fi
fi
# extra setup steps contributed by features (each script is idempotent), e.g. the real-ComfyUI test copy
for step in scripts/setup.d/*.sh; do
  [ -e "$step" ] || continue
  bash "$step"
done
echo "setup done: $(.venv/bin/python -c 'import torch; print("torch", torch.__version__)')"
