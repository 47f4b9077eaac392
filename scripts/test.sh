#!/usr/bin/env bash
# The README's test command: set up (idempotent), then run the whole test-suite with pytest; arguments go to pytest
# (`-m "not slow"`: the fast subset). The 25 slowest tests are listed at the end, to keep the budget in view.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q --durations=25 "$@"
