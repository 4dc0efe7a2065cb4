#!/usr/bin/env bash
# Every GPU check in one run, sized for a few minutes on one H100: the CUDA tests, then the GPU benchmarks
# (the CUDA-graph step, bench_solver, bench_batched, the samplers' synchronisations). Reports go to
# benchmarks/results/ and, where $OUT names a folder, are copied there with the logs. gpu_smoke.py needs
# NVlabs/edm2 and diffusers and is run on its own (docs/edm2.md).
#
#     bash benchmarks/gpu_checks.sh
#
# pynodeta is imported from this checkout (PYTHONPATH), so a machine without the network needs no build step.
# Packages its image lacks (jsonargparse for the CLI, torchode, diffusers, ...) can come as wheels in .whl/,
# installed into a scratch folder first.
set -uo pipefail
cd "$(dirname "$0")/.."
logs=${OUT:-$(mktemp -d)}
mkdir -p "$logs"
if compgen -G ".whl/*.whl" > /dev/null; then
    site=$(mktemp -d)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl || exit 1
    export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
note="$(python3 -c 'import torch; print(torch.cuda.get_device_name(), "torch", torch.__version__)'), $(nproc) CPU cores"
status=0
run() {  # run <seconds> <log name> <command...>: a step that fails or times out is reported, the rest still run
    local limit=$1 name=$2
    shift 2
    echo "== $name: $*"
    timeout "$limit" "$@" 2>&1 | tee "$logs/$name.log" | tail -15
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || { echo "== $name exited $rc"; status=1; }
}
run 200 test_cuda python3 -m pytest -q tests/test_cuda.py
run 120 graphed_step python3 benchmarks/graphed_step.py --device cuda --repeats 11 --note "$note"
run 90 bench_solver python3 benchmarks/bench_solver.py --device cuda --repeats 11 --note "$note"
run 90 bench_batched python3 benchmarks/bench_batched.py --device cuda --repeats 7 --note "$note"
run 60 sampling_syncs python3 benchmarks/sampling_syncs.py --device cuda --repeats 11 --note "$note"
[ -z "${OUT:-}" ] || cp -r benchmarks/results "$OUT/results"
exit $status
