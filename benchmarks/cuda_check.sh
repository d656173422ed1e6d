#!/usr/bin/env bash
# The GPU check, in one command of under 10 minutes on a machine with a CUDA GPU: the tests marked `cuda` (skipped
# elsewhere), then the benchmarks on `--device cuda` at sizes that fit the time.
#
#     bash benchmarks/cuda_check.sh
#
# Run it from anywhere in a Python environment with the requirements installed (and flash_attn, to include
# FlashAttention-2). It prints every test that passed or was skipped (and why), each benchmark's figures, then a
# summary of the steps with their times; it exits non-zero if a step failed or ran out of time. Each step has a time
# limit and all of them end by 9.5 minutes: a step past its limit is interrupted (pytest still prints what it ran)
# and the rest go on.
set -u
cd "$(dirname "$0")/.."

# A 16-core GPU host: half the cores for torch's CPU side (preprocessing, random initialisation), as OpenMP threads
# of torch's default (all cores) spin against those of the processes the tests launch.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
DEADLINE=$((SECONDS + 570))
RESULTS=()
FAILED=0

step() {  # step NAME LIMIT_SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    local left=$((DEADLINE - SECONDS))
    ((limit > left)) && limit=$left
    if ((limit < 10)); then
        RESULTS+=("$name: not run, no time left")
        FAILED=1
        return
    fi
    echo
    echo "=== $name (at most $limit s): $*"
    local started=$SECONDS
    timeout --signal=INT --kill-after=15 "$limit" "$@"
    local rc=$? outcome
    case $rc in
        0) outcome="passed" ;;
        124) outcome="ran out of its $limit s"; FAILED=1 ;;
        *) outcome="FAILED (exit $rc)"; FAILED=1 ;;
    esac
    RESULTS+=("$name: $outcome in $((SECONDS - started)) s")
}

python3 - <<'EOF' || exit 1
import importlib.util
import sys

import torch

if not torch.cuda.is_available():
    sys.exit(f"no CUDA GPU visible to torch {torch.__version__}: the cuda tests would all be skipped")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}, "
      f"flash_attn {'installed' if importlib.util.find_spec('flash_attn') else 'not installed'}")
EOF

step "pytest -m cuda" 300 python3 -m pytest -m cuda -v -rs --durations=10 -p no:cacheprovider
step "real_width_step (full depth)" 90 python3 -m benchmarks.real_width_step --device cuda --layers 36 --steps 3
step "train_step" 45 python3 -m benchmarks.train_step --device cuda --steps 10
step "generate" 45 python3 -m benchmarks.generate --device cuda --repeats 2
step "eval" 45 python3 -m benchmarks.eval --device cuda --repeats 1
step "memory (4 layers)" 90 python3 -m benchmarks.memory --device cuda --layers 4
step "backbones" 120 python3 -m benchmarks.backbones --device cuda --repeats 2

echo
echo "=== summary ($SECONDS s in all)"
printf '%s\n' "${RESULTS[@]}"
exit $FAILED
