#!/usr/bin/env bash
# Install a headless-capable Chromium for the report browser test (tests/system/test_browser_report.py).
#
# Idempotent: does nothing when a chromium binary is already on PATH (or CHROMIUM is set to an
# executable). Needs root or sudo and access to the Debian/Ubuntu package mirrors. Exits 0 on
# success, non-zero when the package cannot be installed (the browser test then skips itself).
set -euo pipefail

find_chromium() {
    if [[ -n "${CHROMIUM:-}" && -x "${CHROMIUM}" ]]; then
        echo "${CHROMIUM}"
        return 0
    fi
    local name
    for name in chromium chromium-browser google-chrome-stable google-chrome; do
        if command -v "${name}" >/dev/null 2>&1; then
            command -v "${name}"
            return 0
        fi
    done
    return 1
}

if existing=$(find_chromium); then
    echo "chromium already installed: ${existing} ($("${existing}" --version 2>/dev/null || echo unknown version))"
    exit 0
fi

SUDO=""
if [[ "$(id -u)" != "0" ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo -n"
    else
        echo "install_chromium.sh: need root (or sudo) to apt-get install chromium" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
${SUDO} apt-get update -qq
# Debian names the package "chromium"; Ubuntu's "chromium-browser" is a snap shim, try it last.
# fonts-dejavu-core gives the screenshots readable glyphs.
if ! ${SUDO} apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core; then
    ${SUDO} apt-get install -y -qq --no-install-recommends chromium-browser fonts-dejavu-core
fi

installed=$(find_chromium) || { echo "install_chromium.sh: chromium not found after install" >&2; exit 1; }
echo "chromium installed: ${installed} ($("${installed}" --version 2>/dev/null || echo unknown version))"
