#!/usr/bin/env bash
# Create ./.venv-monailabel: MONAI Label 0.8.5 and monai_unet2 (editable) beside torch 2.13.0 (local CPU wheel).
#
# A separate venv because monailabel 0.8.5 needs pydicom 2.4 (it fails to start under pydicom 3) and its full
# dependency tree (sam2, monai[torchvision]) would replace the CPU torch with a multi-GB CUDA build. So:
#   * every pip call is constrained by monailabel-constraints.txt (torch==2.13.0, pydicom==2.4.4, ...);
#   * monailabel itself is installed with --no-deps, its needed subset comes from scripts/monailabel-requirements.txt;
#   * torchvision is left out (the only torchvision 0.28.0 wheel on the indexes is a CUDA build that cannot be
#     imported next to CPU torch), so the one module-level torchvision import of the monaibundle code path
#     (monailabel/transform/post.py, used only by a pathology debug transform) is turned into MONAI's
#     optional_import. See docs/monailabel.md.
# Usage: scripts/setup_monailabel.sh        (re-running it is safe; PYTHON=python3.11 to choose the interpreter)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
venv=.venv-monailabel
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c monailabel-constraints.txt)

run_pip() {
    local log
    log="$(mktemp)"
    if ! "${pip[@]}" "$@" >"$log" 2>&1; then
        grep -v "is ignored: it is neither a file nor a directory" "$log" >&2
        rm -f "$log"
        echo "setup_monailabel.sh: pip install $* failed (output above)" >&2
        exit 1
    fi
    # monailabel is installed --no-deps, so pip lists its left-out extras (sam2, ...) as conflicts: expected.
    grep -v -e "is ignored: it is neither a file nor a directory" -e "^monailabel 0.8.5 requires" \
        -e "dependency resolver does not currently take into account" "$log" >&2 || true
    rm -f "$log"
}

run_pip "torch==2.13.0"
run_pip -r scripts/monailabel-requirements.txt -e .
run_pip --no-deps "monailabel==0.8.5"

"$venv/bin/python" - <<'PY'
import pathlib

import monailabel

post = pathlib.Path(monailabel.__file__).parent / "transform" / "post.py"
text = post.read_text()
eager = "from torchvision.utils import make_grid, save_image\n"
lazy = (
    'make_grid, _ = optional_import("torchvision.utils", name="make_grid")\n'
    'save_image, _ = optional_import("torchvision.utils", name="save_image")\n'
)
if eager in text:
    post.write_text(text.replace(eager, lazy))
elif lazy not in text:
    raise SystemExit(f"setup_monailabel.sh: unexpected content in {post}; cannot make its torchvision import lazy")
PY

# MONAI 1.6's Spacingd treats every key that starts with "<key>_" as a meta dict and calls .update() on it; MONAI
# Label adds the string "image_path", so every /infer through a bundle with Spacingd fails. Guard that one line.
"$venv/bin/python" - <<'PY'
import pathlib

import monai

spatial = pathlib.Path(monai.__file__).parent / "transforms" / "spatial" / "dictionary.py"
text = spatial.read_text()
unsafe = '                    if "filename_or_obj" in d[key].meta and is_supported_format(\n'
safe = '                    if isinstance(d[meta_key], dict) and "filename_or_obj" in d[key].meta and is_supported_format(\n'
if text.count(unsafe) == 1:
    spatial.write_text(text.replace(unsafe, safe))
elif text.count(safe) != 1:
    raise SystemExit(f"setup_monailabel.sh: unexpected content in {spatial}; cannot guard Spacingd's meta-dict update")
PY

"$venv/bin/python" - <<'PY'
import pydicom
import torch

assert torch.__version__ == "2.13.0+cpu" and torch.version.cuda is None, f"unexpected torch {torch.__version__}"
assert pydicom.__version__.startswith("2.4."), f"monailabel 0.8.5 needs pydicom 2.4.x, found {pydicom.__version__}"
import monailabel
import monailabel.app  # noqa: F401  (the FastAPI app: imports every endpoint and datastore)
import monailabel.tasks.infer.bundle  # noqa: F401
import monailabel.tasks.train.bundle  # noqa: F401
import monai_unet2

print(
    f"monailabel {monailabel.__version__} + monai_unet2 {monai_unet2.__version__} ready in .venv-monailabel "
    f"(torch {torch.__version__}, pydicom {pydicom.__version__})"
)
PY
