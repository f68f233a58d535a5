#!/usr/bin/env bash
# Sets everything up (engine + test extras: slicer-core, PySide6) and runs the whole pytest suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh test
# The web viewer's tests open its page in headless Chromium (Debian package `chromium`) and render Slicer's slice
# views offscreen through Mesa EGL (libegl1, libegl-mesa0); without them those tests skip.
if ! command -v chromium >/dev/null 2>&1 || ! ldconfig -p 2>/dev/null | grep -q libEGL_mesa; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium libegl1 libegl-mesa0 \
        >/dev/null; } \
      || echo "note: apt-get could not install chromium/EGL; the web viewer's browser tests will skip" >&2
  else
    echo "note: chromium or Mesa EGL is missing (as root: apt-get install chromium libegl1 libegl-mesa0);" \
         "the web viewer's browser tests will skip" >&2
  fi
fi
export QT_QPA_PLATFORM=offscreen
# One BLAS/OpenMP thread per process: tests run parent and child processes side by side on 2 cores, and
# oversubscribed OpenMP threads spin against each other (measured 10x slower steps).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/python -m pytest "$@"
