#!/usr/bin/env bash
# Install the DICOM validators that tests/test_dicom_seg_content.py checks our DICOM SEGs with:
#   - dciodvfy (David Clunie's dicom3tools, Debian package dicom3tools): the IOD validator; our SEGs must give 0 errors;
#   - dcmqi's segimage2itkimage (pip package dcmqi, no dependencies, the converter 3D Slicer's QuantitativeReporting
#     uses), installed into ./.venv: the SEG must decode voxel for voxel onto the source CT and keep codes and colours.
# Usage: scripts/setup_dicom_tools.sh      (after scripts/setup_env.sh; root or sudo for apt; re-running is quick)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if ! command -v dciodvfy >/dev/null; then
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends dicom3tools >/dev/null
fi
command -v dciodvfy >/dev/null || { echo "setup_dicom_tools.sh: dciodvfy missing after installing dicom3tools" >&2; exit 1; }

[ -x .venv/bin/python ] || { echo "setup_dicom_tools.sh: run scripts/setup_env.sh test first (no ./.venv)" >&2; exit 1; }
if [ ! -x .venv/bin/segimage2itkimage ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt dcmqi 2>&1 \
        | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
fi
[ -x .venv/bin/segimage2itkimage ] || { echo "setup_dicom_tools.sh: dcmqi did not install segimage2itkimage" >&2; exit 1; }
echo "dicom3tools $(dpkg-query -W -f='${Version}' dicom3tools 2>/dev/null || echo '?') and dcmqi $(.venv/bin/python -c 'from importlib.metadata import version; print(version("dcmqi"))') ready"
