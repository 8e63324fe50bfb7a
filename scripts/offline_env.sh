# Source this (`source scripts/offline_env.sh`) in the repository root of a machine without network that has
# python3 and torch but not hydra-core/omegaconf: it installs the wheels `make gpu-ready` put into .whl/ into a
# temporary folder and points PYTHONPATH and MNIST_SOURCE at them and at .gpu_data/. Then `python3 -m stn.train ...`
# and `python3 -m stn.gpu_check ...` run as in a full setup (use logger=none: wandb is not carried).
if [ ! -d .whl ] || [ ! -d .gpu_data/MNIST/raw ]; then
  echo "error: .whl/ or .gpu_data/MNIST/raw is missing in $(pwd): run 'make gpu-ready' on a machine with network" \
    "and carry both folders here" >&2
  return 2 2>/dev/null || exit 2
fi
STN_OFFLINE_SITE=$(mktemp -d)  # the carried wheels go here, not into the machine's own site-packages
if ! python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$STN_OFFLINE_SITE" .whl/*.whl; then
  echo "error: installing the wheels in .whl/ failed (see above); rerun 'make gpu-ready' for this Python" >&2
  return 1 2>/dev/null || exit 1
fi
export PYTHONPATH="$STN_OFFLINE_SITE:$(pwd)/src" PYTHONUNBUFFERED=1 MNIST_SOURCE="$(pwd)/.gpu_data/MNIST/raw"
