#!/usr/bin/env bash
# Provision a Pinnace node / test machine: Debian packages + /opt/pinnace/venv.
#
# One script for every place a Pinnace machine is made, so they cannot drift:
#   provision.sh --print-apt-packages
#       The Debian packages a node needs, one per line. vagrant/vm/build-image
#       passes them to `debootstrap --include` (the chroot has no network).
#   provision.sh --print-requirements PYPROJECT
#       The pip requirements: [project].dependencies of PYPROJECT + its dev extra
#       minus ruff/mypy/types-* (pytest and any test-only import stay). Read
#       from pyproject.toml so the list lives in one place.
#   provision.sh --offline WHEELDIR --requirements FILE
#       Inside the image build's chroot: no apt (only checks the packages are
#       there), venv from WHEELDIR with `pip install --no-index`.
#   provision.sh [--pyproject FILE | --requirements FILE]
#       On a Vagrant box with network: apt-get install, then pip from PyPI.
#       Default pyproject: ../pyproject.toml beside this script, else /vagrant's.
# Idempotent: the venv is rebuilt only when the requirements changed.
set -euo pipefail

VENV=/opt/pinnace/venv

# What a node runs and what the test suite drives on it.
APT_PACKAGES=(
  python3 python3-venv      # the runtime + ensurepip for the venv
  iproute2 nftables         # pod networking (veth, bridges, NAT)
  kmod util-linux procps    # modprobe, mount/unshare/nsenter, ps
  e2fsprogs zstd            # image layers, filesystems
  busybox-static            # fixture images are built from it (tests/fixtures)
  runc crun                 # peer runtimes for comparison benchmarks
)
# Only where pip builds from source (network mode), for a dependency without a wheel.
# The image build brings host-built wheels instead, so the image has no compiler.
BUILD_PACKAGES=(gcc libc6-dev libcap-dev python3-dev)

say() { printf 'provision: %s\n' "$*" >&2; }

print_requirements() {
  python3 - "$1" <<'PY'
import re
import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
dev = project.get("optional-dependencies", {}).get("dev", [])
# The tests run on nodes, so the dev extra comes too, except the lint and type
# tools (host-only). Collecting tests/ imports every test module, so a test-only
# import missing here would break the VM tier.
host_only = re.compile(r"(ruff|mypy|types-.*)$", re.IGNORECASE)
tests = [d for d in dev if not host_only.match(re.split(r"[\s<>=!~\[;]", d, maxsplit=1)[0])]
print("\n".join(project["dependencies"] + tests))
PY
}

apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  say "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

check_installed() {
  local p missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    say "offline mode, but packages are missing: ${missing[*]} (pass them to debootstrap --include)"
    exit 1
  fi
}

install_venv() {  # $1: requirements file, $2: wheel dir or empty for PyPI
  local req=$1 wheels=$2 stamp=$VENV/.pinnace-requirements want
  want=$(sha256sum < "$req" | cut -d' ' -f1)
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    say "$VENV is up to date"
    return 0
  fi
  say "installing $(grep -c . "$req") requirements into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  if [ -n "$wheels" ]; then
    "$VENV/bin/pip" install -q --no-index --find-links "$wheels" -r "$req"
  else
    "$VENV/bin/pip" install -q -r "$req"
  fi
  echo "$want" > "$stamp"
}

offline="" requirements="" pyproject=""
while [ $# -gt 0 ]; do
  case "$1" in
    --print-apt-packages) printf '%s\n' "${APT_PACKAGES[@]}"; exit 0 ;;
    --print-requirements) print_requirements "${2:?--print-requirements PYPROJECT}"; exit 0 ;;
    --offline) offline=${2:?--offline WHEELDIR}; shift ;;
    --requirements) requirements=${2:?--requirements FILE}; shift ;;
    --pyproject) pyproject=${2:?--pyproject FILE}; shift ;;
    *) say "unknown argument: $1"; exit 2 ;;
  esac
  shift
done

[ "$(id -u)" -eq 0 ] || { say "run as root"; exit 1; }

if [ -n "$offline" ]; then
  [ -n "$requirements" ] || { say "--offline needs --requirements FILE"; exit 2; }
  check_installed "${APT_PACKAGES[@]}"
  install_venv "$requirements" "$offline"
  exit 0
fi

apt_install "${APT_PACKAGES[@]}" "${BUILD_PACKAGES[@]}"
if [ -z "$requirements" ]; then
  if [ -z "$pyproject" ]; then
    pyproject=$(dirname "$(readlink -f "$0")")/../pyproject.toml
    [ -f "$pyproject" ] || pyproject=/vagrant/pyproject.toml  # Vagrant uploads the script alone
  fi
  requirements=$(mktemp)
  trap 'rm -f "$requirements"' EXIT
  print_requirements "$pyproject" > "$requirements"
fi
install_venv "$requirements" ""
