#!/usr/bin/env bash
# Sets everything up (engine + test extras: slicer-core, PySide6) and runs the whole pytest suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh test
export QT_QPA_PLATFORM=offscreen
exec .venv/bin/python -m pytest "$@"
