#!/usr/bin/env bash
# Sets everything up (engine + test extras: slicer-core, PySide6) and runs the whole pytest suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh test
export QT_QPA_PLATFORM=offscreen
# One BLAS/OpenMP thread per process: tests run parent and child processes side by side on 2 cores, and
# oversubscribed OpenMP threads spin against each other (measured 10x slower steps).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/python -m pytest "$@"
