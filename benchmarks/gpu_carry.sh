#!/usr/bin/env bash
# What a run of benchmarks/gpu.py on the lent GPU machine must carry, prepared here (the machine has no network):
#
#   bash benchmarks/gpu_carry.sh [CIFAR10_SUBSET]
#
# 1. .whl/: Python 3.12 wheels (manylinux x86_64) of the project's runtime dependencies that the machine's
#    image lacks (it has torch 2.11, torchvision 0.26, numpy, scipy, xarray, pandas, matplotlib, pyyaml,
#    scikit-learn, scikit-image, pillow, tqdm, attrs, cloudpickle, fsspec, toolz, packaging, requests, ...):
#    netCDF4 + cftime (capture, every netCDF file), jsonschema + jsonschema-specifications + referencing +
#    rpds-py (onepixel.config), dask + partd + locket (lazy cubes), and torchattacks (compare_tools).
#    Versions: the pins of constraints.txt, the others as in the development environment. Other versions of
#    the same packages are removed from .whl/ (two versions of one package stop the whole install there).
# 2. .gpu/cifar10-subset: a copy of the staged CIFAR-10 subset (default: shared/data/cifar10-subset in the
#    repository if present, else ../shared/data/cifar10-subset), since ../shared does not travel.
#
# Both folders are ignored by git (.gitignore) and travel only when named in the call's carry. The device
# call (carry [".whl", ".gpu"], timeout_s 600):
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:src PYTHONUNBUFFERED=1 && python3 benchmarks/gpu.py --out $OUT --cifar-root .gpu/cifar10-subset
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(
    netCDF4==1.7.5.1.post1
    cftime==1.6.6.1
    jsonschema==4.26.0
    jsonschema-specifications==2025.9.1
    referencing==0.37.0
    rpds-py==2026.9.1
    dask==2026.8.0
    partd==1.4.2
    locket==1.0.0
    torchattacks==3.5.1
)
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
    PYTHON=.venv/bin/python
fi

mkdir -p .whl
for spec in "${WHEELS[@]}"; do
    name=${spec%%==*}
    version=${spec#*==}
    stem=$(echo "$name" | tr '.-' '__')  # a wheel's file name spells the project's name with underscores
    find .whl -maxdepth 1 -type f -iname "${stem}-*.whl" ! -iname "${stem}-${version}-*.whl" -print -delete
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$spec"
done

src=${1:-}
if [ -z "$src" ]; then
    src=shared/data/cifar10-subset
    [ -e "$src" ] || src=../shared/data/cifar10-subset
fi
if [ -e "$src" ]; then
    rm -rf .gpu/cifar10-subset
    mkdir -p .gpu
    cp -r "$src" .gpu/cifar10-subset
else
    echo "warning: no CIFAR-10 subset at $src: paper_setting will be skipped there (compare_tools uses the digits)" >&2
fi

ls -l .whl/*.whl
du -sh .whl .gpu 2>/dev/null || true
echo "carry: [\".whl\", \".gpu\"] (together at most 64 MiB with the working tree)"
