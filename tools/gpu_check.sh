#!/usr/bin/env bash
# The GPU checks in one prepared call: the CUDA tests, then `l2o bench --device cuda`, quick for every
# case and full for the cases with GPU targets. Everything it makes lands in $OUT (default ./gpu_out)
# as at most five files: device.txt, cuda_tests.txt, bench_quick.txt, bench_full.txt, bench.tgz
# (the JSON records and table.md of both runs).
#
# Made for a machine whose Python already has torch, triton, numpy, scikit-learn, sympy, pandas, tqdm
# (the device image): l2o_lib runs from the checkout through PYTHONPATH, no install and no build
# backend needed. Wheels of what the image lacks (mnist1d for the L3RS cases) are installed from
# .whl/ when that folder is there; see the README's "Running on a GPU" for how to fetch them.
#
# Each stage has its own time limit (seconds, overridable) so that one slow stage cannot eat the
# others' budget; the defaults add up to 8.5 minutes.
set -u
out=${OUT:-gpu_out}
device=${DEVICE:-cuda}
tests_s=${TESTS_S:-120} quick_s=${QUICK_S:-150} full_s=${FULL_S:-240}
full_cases=${FULL_CASES:-sl2o_meta_step nes_population landscape_grid pbfgs_step fused_step}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 L2O_HEADLESS=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}

if compgen -G ".whl/*.whl" >/dev/null; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/l2o_site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/l2o_site"
fi

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
    $py -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
} >"$out/device.txt" 2>&1

timeout "$tests_s" $py -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py tests/test_fused.py \
    >"$out/cuda_tests.txt" 2>&1
echo "exit status $?" >>"$out/cuda_tests.txt"

bench=$(mktemp -d)
timeout "$quick_s" $py -m l2o_lib.cli bench --quick --device "$device" --out "$bench/quick" >"$out/bench_quick.txt" 2>&1
echo "exit status $?" >>"$out/bench_quick.txt"
# shellcheck disable=SC2086 # the case list is meant to split
timeout "$full_s" $py -m l2o_lib.cli bench $full_cases --device "$device" --out "$bench/full" >"$out/bench_full.txt" 2>&1
echo "exit status $?" >>"$out/bench_full.txt"
tar czf "$out/bench.tgz" -C "$bench" .
tail -n 25 "$out"/*.txt
