#!/usr/bin/env bash
# The README's test command: set up (idempotent), then run the whole test-suite with pytest; arguments go to pytest
# (`-m "not slow"`: the fast subset). The 25 slowest tests are listed at the end, to keep the budget in view.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# two workers (pytest-xdist): test files spread over them, the ComfyUI-facing tests together (tests/conftest.py)
exec .venv/bin/python -m pytest -q -n 2 --dist loadgroup --durations=25 "$@"
