#!/usr/bin/env bash
# Everything the control machine needs (Debian 12, as root): the lab's tools and tritonfleet with its
# Python dependencies. Safe to run again: apt and pip skip what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
apt_packages=(debootstrap systemd-container iproute2 openssh-client rsync dpkg-dev patchelf
              libpython3.11 python3-numpy)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^ii' || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v -e '^WARNING: Running pip as' -e 'is ignored: it is neither' || true
