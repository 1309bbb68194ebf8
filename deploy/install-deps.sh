#!/usr/bin/env bash
# Installs every Debian 12 package that the build, the tests and the benchmarks need.
# Idempotent and non-interactive; run as root (or through sudo).
set -euo pipefail

packages=(
  # toolchain
  build-essential cmake ninja-build pkg-config git
  # the second compiler: .ci/run's user-like build (clang-16, Release, no test hooks)
  clang-16
  # libraries
  librocksdb-dev libzmq3-dev cppzmq-dev liburing-dev libaio-dev
  libprotobuf-dev protobuf-compiler
  libboost-log-dev libboost-program-options-dev
  libzstd-dev nlohmann-json3-dev libxxhash-dev
  # pe-agent takeover: reads the migrated OS's gzip'd initramfs
  zlib1g-dev
  libgtest-dev libgmock-dev
  # real NBD clients and image tools used by tests and benchmarks
  qemu-utils libnbd-bin
  # test and benchmark helpers
  procps psmisc time util-linux coreutils python3 bc
  # trace mode tests: real filesystems on loop devices and a real workload
  e2fsprogs xfsprogs fdisk fio tar
  # trace-mode benchmark baseline: the standard block tracer
  blktrace
  # semi-booted target: QEMU, the PE image builder (busybox, cpio, depmod, apt-get download of
  # linux-image-amd64's kernel package), YAML configs
  qemu-system-x86 qemu-utils busybox-static cpio kmod xz-utils gzip libyaml-cpp-dev
  # the lab: network namespaces, bridge, veth, taps
  iproute2
  # xxhsum: tests compare the pe-agent's region checksums (XXH3-64) with the source's
  xxhash
  ipxe-qemu seabios
  # the agent's package test: a clean Debian 12 root to install cdp-agent_*.deb into
  debootstrap
  # the lab's real source server (deploy/lab/build-real-source; debootstrap above): a GPT root
  # disk, an LVM data disk with xfs (metadata written without device-mapper), e2fsprogs and
  # xfsprogs above; its clients in cdp-client: psql and pg_amcheck (postgresql-client-15),
  # pgbench (in Debian 12 shipped by the server package postgresql-15; no cluster is created on
  # the host); the ledger client of the lab's cutover test (tests/integration/pg_ledger_client.py)
  gdisk lvm2 postgresql-client-15 postgresql-15 python3-psycopg2
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages already installed"
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
if [[ " ${missing[*]} " == *" postgresql-15 "* && ! -e /etc/postgresql-common/createcluster.d/cdp-no-main.conf ]]; then
  # The host only needs pgbench from postgresql-15: no main cluster, no server on the host.
  $SUDO mkdir -p /etc/postgresql-common/createcluster.d
  echo "create_main_cluster = false" |
    $SUDO tee /etc/postgresql-common/createcluster.d/cdp-no-main.conf >/dev/null
fi
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "install-deps: done"
