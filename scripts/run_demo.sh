#!/usr/bin/env bash
# Sets everything up and runs the demo: phantoms -> train (tiny, CPU) -> generate -> evaluate.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/ctdiffusion demo "$@"
