#!/usr/bin/env bash
# The GPU check (README "GPU check") on a machine without network: python3 and torch, the wheels and MNIST carried
# in .whl/ and .gpu_data/ (from `make gpu-ready`). Run from the repository root.
#   usage: scripts/gpu_check_offline.sh OUT_DIR [stn.gpu_check arguments, e.g. --quick --sections runs]
# Writes OUT_DIR/gpu_check_<gpu>.{md,json} and the workers' logs as OUT_DIR/gpu_check_logs.tgz.
set -u
out=${1:?usage: scripts/gpu_check_offline.sh OUT_DIR [stn.gpu_check arguments]}
shift
source "$(dirname "$0")/offline_env.sh" || exit $?
work=$(python3 -c "import tempfile; print(tempfile.gettempdir())")/stn_gpu_check
mkdir -p "$out"
python3 -m stn.gpu_check --out "$out" --work "$work" "$@"
rc=$?
if [ -d "$work/logs" ]; then tar -czf "$out/gpu_check_logs.tgz" -C "$work" logs; fi
exit $rc
