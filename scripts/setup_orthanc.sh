#!/usr/bin/env bash
# Install Orthanc (a DICOM server / mini-PACS) with its DICOMweb and GDCM plugins from the Debian packages, for the
# PACS round trip of tests/test_monailabel_server.py and the hospital recipe in docs/monailabel.md.
#
# orthanc-gdcm is needed: the committed CT series is JPEG 2000, MONAI Label's DICOMweb client asks for Explicit VR
# Little Endian, and Orthanc on its own cannot decode JPEG 2000 ("Cannot transcode image", HTTP 500).
# Nothing is started: the packages' service is left to the system (Docker images deny it through policy-rc.d); the
# tests start their own Orthanc with a config in a temporary folder.
# Usage: scripts/setup_orthanc.sh      (root or sudo; re-running it is safe and quick once installed)
set -euo pipefail
packages=(orthanc orthanc-dicomweb orthanc-gdcm)
files=(/usr/sbin/Orthanc /usr/share/orthanc/plugins/libOrthancDicomWeb.so /usr/share/orthanc/plugins/libOrthancGdcm.so)

installed=true
for file in "${files[@]}"; do
    [ -e "$file" ] || installed=false
done
if ! $installed; then
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi
for file in "${files[@]}"; do
    [ -e "$file" ] || { echo "setup_orthanc.sh: $file missing after installing ${packages[*]}" >&2; exit 1; }
done
echo "Orthanc $(dpkg-query -W -f='${Version}' orthanc) with DICOMweb $(dpkg-query -W -f='${Version}' orthanc-dicomweb) and GDCM $(dpkg-query -W -f='${Version}' orthanc-gdcm) ready"
