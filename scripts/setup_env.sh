#!/usr/bin/env bash
# Create ./.venv with torch 2.13.0 (local CPU wheel) and monai_unet2 installed in editable mode.
# Usage: scripts/setup_env.sh [extra ...]   e.g. scripts/setup_env.sh test
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
extras="${*:-}"
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt)
"${pip[@]}" "torch==2.13.0"
spec="."
if [ -n "$extras" ]; then
    spec=".[$(echo "$extras" | tr ' ' ',')]"
fi
log="$(mktemp)"
if ! "${pip[@]}" -e "$spec" >"$log" 2>&1; then
    grep -v "is ignored: it is neither a file nor a directory" "$log" >&2
    rm -f "$log"
    echo "setup_env.sh: installing monai_unet2 failed (output above)" >&2
    exit 1
fi
rm -f "$log"
.venv/bin/python - <<'PY'
import torch
assert torch.__version__.startswith("2.13.0") and torch.version.cuda is None, f"unexpected torch {torch.__version__}"
import monai_unet2
print(f"monai_unet2 {monai_unet2.__version__} ready (torch {torch.__version__}, CPU build)")
PY
