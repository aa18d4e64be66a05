#!/usr/bin/env bash
# Create ./.venv-nnunet: nnU-Net v2 beside torch 2.13.0 (local CPU wheel), for benchmarks/vs_nnunet.py.
#
# A separate venv because `pip install nnunetv2` pulls timm -> torchvision, and the only torchvision wheels on the
# indexes are CUDA builds that either cannot be imported beside the CPU torch or replace it. So:
#   * every pip call is constrained by constraints.txt (torch==2.13.0);
#   * nnunetv2 and dynamic_network_architectures are installed with --no-deps, their needed subset comes from
#     benchmarks/nnunet_requirements.txt (everything except timm; see the comment there).
# Usage: benchmarks/nnunet_env.sh        (re-running it is safe; PYTHON=python3.11 to choose the interpreter)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
venv="${NNUNET_VENV:-.venv-nnunet}"
nnunet_version="2.8.1"
dna_version="0.4.4"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c constraints.txt)

run_pip() {
    local log
    log="$(mktemp)"
    if ! "${pip[@]}" "$@" >"$log" 2>&1; then
        grep -v "is ignored: it is neither a file nor a directory" "$log" >&2
        rm -f "$log"
        echo "nnunet_env.sh: pip install $* failed (output above)" >&2
        exit 1
    fi
    # nnunetv2 / dynamic_network_architectures are installed --no-deps: pip lists the left-out timm as a conflict.
    grep -v -e "is ignored: it is neither a file nor a directory" -e "requires timm" \
        -e "dependency resolver does not currently take into account" "$log" >&2 || true
    rm -f "$log"
}

run_pip "torch==2.13.0"
run_pip -r benchmarks/nnunet_requirements.txt
run_pip --no-deps "nnunetv2==$nnunet_version" "dynamic_network_architectures==$dna_version"

"$venv/bin/python" - <<'PY'
import importlib.metadata
import importlib.util
import sys

import torch

assert torch.__version__ == "2.13.0+cpu" and torch.version.cuda is None, f"unexpected torch {torch.__version__}"
assert importlib.util.find_spec("torchvision") is None, "torchvision must stay out of .venv-nnunet (CUDA builds only)"
from dynamic_network_architectures.architectures.unet import PlainConvUNet  # noqa: F401
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor  # noqa: F401
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer  # noqa: F401

print(f"nnunetv2 {importlib.metadata.version('nnunetv2')} ready in {sys.prefix} (torch {torch.__version__})")
PY
