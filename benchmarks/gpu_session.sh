#!/usr/bin/env bash
# Every GPU check in one run, for a machine lent for a few minutes (see BENCHMARKS.md):
#   bash benchmarks/gpu_session.sh OUTDIR
# Triton configurations and throughput, CUDA == CPU bit for bit, the CUDA tests, the training step on the GPU,
# then the torch.compile path's correctness. Each step has its own time limit (together 530 s, inside one device
# call of 600 s); output is written as it comes.
set -o pipefail
out=${1:-/tmp/boundfinder-gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export BOUNDFINDER_NATIVE=0  # the CPU-side references need no C++ build here
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv | tee "$out/machine.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/machine.txt"
date -u | tee -a "$out/machine.txt"
timeout 220 python3 -m benchmarks.gpu_check --quick --sweep --log2n 28 --check-log2n 20 --repeats 15 2>&1 \
    | tee "$out/gpu_check.txt"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/emulation/test_device.py \
    "tests/callbacks/test_emulation.py::test_rounding_runs_on_the_models_gpu" 2>&1 | tail -25 | tee "$out/pytest.txt"
timeout 100 python3 benchmarks/bench_training.py --device cuda --rounds 5 --steps 10 --warmup 5 --no-qtorch 2>&1 \
    | tee "$out/training.txt"
BOUNDFINDER_TRITON=0 timeout 60 python3 -c "
import benchmarks.gpu_check as g; print(g.correctness(1 << 20, True, 'CUDA (torch.compile path)'), 'mismatching')" \
    2>&1 | tee "$out/compiled_path.txt"
date -u | tee -a "$out/machine.txt"
