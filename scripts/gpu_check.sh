#!/usr/bin/env bash
# The prepared GPU run: vtr's GPU-marked tests, `vtr bench` TTFT tables and the per-call overhead table,
# written as JSON + markdown. Sized for one short lease (about 8 minutes on an H100/H200).
#
#   bash scripts/gpu_check.sh fetch        # on a machine with PyPI: wheels the GPU machine lacks -> .whl/
#   bash scripts/gpu_check.sh run [OUT]    # on the GPU machine (no network): install .whl/, test, bench
#
# The GPU machines lent here ship older transformers (5.17 when last seen; vtr needs >= 5.18), and a newer
# transformers needs newer packages than they hold (5.25: huggingface-hub >= 2.4 where they have 1.33, and
# kernels, httpx2, which they lack). So `fetch` downloads the version installed in this checkout's .venv with
# every wheel it depends on (about 47 MB, for the machines' Python 3.12), and `run` asks pip, against the
# machine's own packages, which of them are missing or too old (a dry run), and installs only those into
# /tmp/site, never into the system.
set -euo pipefail
cd "$(dirname "$0")/.."

fetch() {
    local version
    version=$(.venv/bin/python -c "import transformers; print(transformers.__version__)")
    rm -rf .whl && mkdir -p .whl
    python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "transformers==$version"
    du -sh .whl
}

# Install into /tmp/site the carried wheels that the carried transformers needs and this machine lacks.
install_wheels() {
    local wheel version
    wheel=$(compgen -G ".whl/transformers-*.whl" | head -n 1) || return 0
    version=$(basename "$wheel" | cut -d- -f2)
    python3 -m pip install -q --dry-run --no-index --find-links .whl --report /tmp/plan.json "transformers==$version"
    python3 -c 'import json, sys, urllib.parse as u
for item in json.load(open(sys.argv[1]))["install"]:
    print(u.unquote(u.urlparse(item["download_info"]["url"]).path))' /tmp/plan.json >/tmp/plan.txt
    echo "installing into /tmp/site: $(xargs -n 1 basename </tmp/plan.txt | tr '\n' ' ')"
    xargs -r python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        </tmp/plan.txt
    export PYTHONPATH=$PWD:/tmp/site
}

run() {
    local out=${1:-${OUT:-gpu_check_out}}
    mkdir -p "$out"
    export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
    install_wheels
    python3 - <<'EOF' | tee "$out/versions.txt"
import torch, transformers
from packaging.version import Version
print("torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "-")
assert torch.cuda.is_available(), "no CUDA device"
assert Version(transformers.__version__) >= Version("5.18"), "transformers < 5.18: carry the wheel (fetch)"
EOF
    local bench="python3 -m vtr.cli bench --device cuda --dtype bfloat16 --repeats 5 --new-tokens 16"
    timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$out/gpu_tests.log" || true
    timeout 150 $bench --model llava-1.5-7b --budgets 576,192,128,64 \
        --methods divprune,random,fastv,pdrop,hiprune,visionzip --json "$out/bench_llava15.json" \
        2>&1 | tee "$out/bench_llava15.md" || true
    timeout 150 $bench --model llava-onevision-7b --frames 32 --budgets 1.0,0.25,0.1 \
        --methods divprune,holitom,holitom+holitom_inner,fastv --json "$out/bench_ov32.json" \
        2>&1 | tee "$out/bench_ov32.md" || true
    timeout 45 python3 scripts/bench_select.py --json "$out/select.json" 2>&1 | tee "$out/select.md" || true
    timeout 90 python3 scripts/bench_overhead.py --presets llava-1.5-7b,qwen2.5-vl-7b,llava-onevision-7b \
        --json "$out/overhead.json" --markdown "$out/overhead.md" 2>&1 | tail -n 60 || true
}

case "${1:-}" in
    fetch) fetch ;;
    run) shift; run "$@" ;;
    *) echo "usage: $0 fetch | run [OUT]" >&2; exit 2 ;;
esac
