#!/usr/bin/env bash
# Every GPU check and benchmark in one command (for a lent GPU machine; see DEVELOPERS.md):
# builds the extension for the local GPU, runs the test suite (CUDA cases included), then the benchmark
# grid, and prints the table last. Results land in ${OUT:-bench-out}/.
#   bash benchmarks/gpu_all.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench-out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1

python -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -3
python -c "import torch, fastnas._ext as e; print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__, \
'| extension:', e.extension_available(), '| CUDA kernels:', e.cuda_compiled(), e.load_error() or '')"

# Kernel tests first (real Triton kernels on the GPU), then everything.
python -m pytest -q -x tests/test_mixed_bn_sum.py tests/test_depthwise_conv.py tests/test_pointwise_conv.py \
    tests/test_masked_aggregate.py tests/test_fast_executor.py tests/test_weighted_sum.py 2>&1 \
    | tee "$out/kernel_tests.log" | tail -5
python -m pytest -q tests 2>&1 | tee "$out/all_tests.log" | tail -5

# Per-kernel table (issue 5: DARTS stage shapes, batch 64 and 256, fp32 and bf16).
python -m benchmarks.run --only kernels --device cuda --batch-sizes 64 256 --precision fp32 bf16 \
    --json "$out/bench_kernels.json" 2>&1 | tee "$out/bench_kernels.md"
# Whole search step: plain PyTorch (every op forced to its reference), reference loop, fast executor.
python -m benchmarks.run --only search_step --device cuda --batch-sizes 64 256 --precision fp32 bf16 --order 1 2 \
    --executor plain reference fast --json "$out/bench_step.json" 2>&1 | tee "$out/bench_step.md"
# P-DARTS: one search step per stage (5 / 11 / 17 cells with 8 / 5 / 3 ops per edge), the published batch 96.
python -m benchmarks.run --only pdarts_stages --device cuda --batch-sizes 96 --precision bf16 \
    --json "$out/bench_pdarts.json" 2>&1 | tee "$out/bench_pdarts.md"
# PC-DARTS (K=4), EDAS and DDSAS (L=28) against DARTS: one search step each at C=16, 8 cells, batch 64.
python -m benchmarks.run --only methods --device cuda --batch-sizes 64 --precision bf16 \
    --json "$out/bench_methods.json" 2>&1 | tee "$out/bench_methods.md"
# Input pipelines (issue 14): DaliFolderLoader (nvJPEG + GPU augmentation) and torchvision's FolderBatchLoader
# over the shared ImageNet sample, against the images/s the ImageNet supernet (C=16, 8 cells, bf16) consumes.
sample=../shared/data/imagenet_sample100.tar
[ -f "$sample" ] || sample=.data/imagenet_sample100.tar
python -m benchmarks.run --only loaders --device cuda --loader-batch 64 --loader-workers 8 --precision bf16 \
    --warmup 2 --repeats 5 --loader-data "$sample" --json "$out/bench_loaders.json" 2>&1 | tee "$out/bench_loaders.md"
