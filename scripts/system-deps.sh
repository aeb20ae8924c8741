#!/usr/bin/env bash
# Install the Debian packages ModelPact needs, only those that are missing.
#   scripts/system-deps.sh run    -> what `make run` needs (PDF rendering)
#   scripts/system-deps.sh test   -> plus Chromium, PostgreSQL, Redis, pdftoppm for the test suite
set -euo pipefail
mode="${1:-run}"
packages=(libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core)
if [ "$mode" = "test" ]; then
  packages+=(chromium fonts-liberation poppler-utils postgresql redis-server)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "Installing Debian packages: ${missing[*]}"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
