#!/usr/bin/env bash
# Installs the PACS the DICOMweb tests run against: Orthanc and its DICOMweb plugin (Debian packages). Idempotent:
# returns at once when both are installed. Without root (and without them) it says so; the PACS tests then skip.
set -euo pipefail
PLUGIN=/usr/share/orthanc/plugins/libOrthancDicomWeb.so
if { command -v Orthanc || [ -x /usr/sbin/Orthanc ]; } >/dev/null 2>&1 && [ -e "$PLUGIN" ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install_orthanc: Orthanc and its DICOMweb plugin are missing; as root on Debian/Ubuntu:" \
         "apt-get install orthanc orthanc-dicomweb (the DICOMweb tests skip without them)" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# The packages' own service is not started: the tests start their own Orthanc on a free port of 127.0.0.1.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get install -y -qq --no-install-recommends orthanc orthanc-dicomweb >/dev/null
test -e "$PLUGIN"
