#!/usr/bin/env bash
# CTDiffusion GPU suite: one prepared run on one GPU (H100/H200: about 5 of the 8 minutes it is allowed).
#
#   benchmarks/gpu_suite.sh [--wheels DIR] [--python PY] [--out FILE] [--only PARTS] [--skip PARTS] [--dry-run]
#                           [--device cpu] [--limit SECONDS] [--objective-minutes M]
#
#   --wheels DIR   install every wheel in DIR into a fresh venv first (offline: --no-index); DIR holds torch (CUDA
#                  build) and the engine's dependencies, made beforehand on a machine with internet, see
#                  docs/benchmarks.md "GPU suite"
#   --python PY    use this interpreter (an environment that already has torch + the engine's dependencies)
#   --dry-run      tiny sizes (every network 8x narrower, small grids): proves the suite end to end on any machine
#   --device cpu   run on the CPU even if a GPU is present (with --dry-run: what CI / a laptop can do)
#   --only PARTS   comma list of checks, speed, objectives, utility (default: all); --skip also takes compile,
#                  resume, ddp. One GPU run = two calls: --skip objectives,utility (speed, ~5 min) and
#                  --only objectives,utility --limit 590 (quality rows: 2 x M minutes of training plus
#                  sampling, evaluation and utility, not yet timed on a GPU), see docs/benchmarks.md
#   --limit S      stop the suite after S seconds (default 470); what was measured until then is kept
#   --objective-minutes M  training budget per objective in the objectives part (default 1.5)
# Writes one JSON file (default benchmarks/results/gpu-suite-DATE.json) and prints its tables, the same ones
# docs/benchmarks.md shows (benchmarks/render_gpu_suite.py). Exit status: 0 all checks passed, 1 some failed,
# 124 the time limit was hit.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS="" PY="${PYTHON:-python3}" OUT="benchmarks/results/gpu-suite-$(date -u +%Y-%m-%d).json" ARGS=() LIMIT=470
while [[ $# -gt 0 ]]; do
  case "$1" in
    --wheels) WHEELS="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --skip) ARGS+=(--skip "$2"); shift 2 ;;
    --only) ARGS+=(--only "$2"); shift 2 ;;
    --objective-minutes) ARGS+=(--objective-minutes "$2"); shift 2 ;;
    --limit) LIMIT="$2"; shift 2 ;;
    --device) ARGS+=(--device "$2"); shift 2 ;;
    --dry-run) ARGS+=(--dry-run); shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "gpu_suite.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [[ -n "$WHEELS" ]]; then
  shopt -s nullglob
  wheels=("$WHEELS"/*.whl)
  [[ ${#wheels[@]} -gt 0 ]] || { echo "gpu_suite.sh: no .whl files in $WHEELS" >&2; exit 2; }
  "$PY" -m venv .gpu-suite-venv
  .gpu-suite-venv/bin/pip install -q --no-index --find-links "$WHEELS" "${wheels[@]}"
  PY=.gpu-suite-venv/bin/python
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
status=0
timeout "$LIMIT" "$PY" benchmarks/gpu_suite.py --out "$OUT" ${ARGS[@]+"${ARGS[@]}"} || status=$?
[[ -f "$OUT" ]] && "$PY" benchmarks/render_gpu_suite.py "$OUT"
exit $status
