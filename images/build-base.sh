#!/usr/bin/env bash
# Builds duomq's base image, a minimal Debian bookworm, without pulling anything from a
# container registry: debootstrap installs bookworm into a temp dir from the Debian mirror
# this machine's apt already uses, and `docker import` turns that dir into an image.
set -euo pipefail

SUITE=bookworm
TAG=duomq-base:bookworm
FORCE=false
MIRROR=${DUOMQ_DEBIAN_MIRROR:-}
SECURITY_MIRROR=${DUOMQ_DEBIAN_SECURITY_MIRROR:-}

usage() {
  cat <<EOF
Usage: images/build-base.sh [--tag TAG] [--force] [--mirror URL] [--security-mirror URL]

Builds the local base image of duomq's container images: a minimal Debian $SUITE
(debootstrap --variant=minbase, plus ca-certificates and the latest security updates),
imported into Docker as $TAG. No container registry is needed; packages come from the
Debian mirror configured in this machine's apt sources (/etc/apt/sources.list and
/etc/apt/sources.list.d/). $SUITE matches the glibc of binaries built on Debian 12.

Does nothing when the image already exists, unless --force is given.

Options:
  --tag TAG              name of the image to create (default: $TAG)
  --force                rebuild even if TAG exists
  --mirror URL           Debian mirror to install from, instead of the one apt uses
                         (or set DUOMQ_DEBIAN_MIRROR)
  --security-mirror URL  Debian security mirror for updates, instead of the one apt uses
                         (or set DUOMQ_DEBIAN_SECURITY_MIRROR); without one in apt's
                         sources either, the image gets no security updates
  -h, --help             show this help

Needs: root (debootstrap creates device nodes and chroots), debootstrap
(apt-get install debootstrap), docker with a running daemon.
Takes about a minute and ~100 MB of temp space (in \$TMPDIR, default /tmp).
EOF
}

die() {
  echo "build-base: error: $*" >&2
  exit 1
}

step() {
  echo "build-base: $*"
}

while [ $# -gt 0 ]; do
  case "$1" in
    --tag) [ $# -ge 2 ] || die "--tag needs a value"; TAG=$2; shift 2 ;;
    --force) FORCE=true; shift ;;
    --mirror) [ $# -ge 2 ] || die "--mirror needs a value"; MIRROR=$2; shift 2 ;;
    --security-mirror) [ $# -ge 2 ] || die "--security-mirror needs a value"; SECURITY_MIRROR=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

command -v docker >/dev/null 2>&1 || die "docker is not installed: install Docker Engine (your distribution's Docker package)"
docker info >/dev/null 2>&1 || die "the Docker daemon is unreachable: start it (systemctl start docker, or dockerd) or set DOCKER_HOST"

image_exists() {
  docker image inspect "$TAG" >/dev/null 2>&1
}

if image_exists && [ "$FORCE" = false ]; then
  step "$TAG already exists; nothing to do (use --force to rebuild)"
  exit 0
fi

[ "$(id -u)" -eq 0 ] || die "debootstrap needs root: run as root (e.g. sudo images/build-base.sh)"
DEBOOTSTRAP=$(PATH="$PATH:/usr/sbin:/sbin" command -v debootstrap) ||
  die "debootstrap is not installed: apt-get install debootstrap"

# Two builds at once (two test runs, say) would both debootstrap; the second waits and
# then finds the image.
LOCK="${TMPDIR:-/tmp}/duomq-build-base.lock"
exec 9>"$LOCK"
if ! flock -n 9; then
  step "another build of the base image is running; waiting for it"
  flock 9
  if image_exists && [ "$FORCE" = false ]; then
    step "$TAG was built meanwhile; nothing to do"
    exit 0
  fi
fi

# Prints "URI SUITE" for every enabled deb source in apt's configuration, one-line
# (*.list) and deb822 (*.sources) formats alike.
apt_sources() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    sed -e 's/#.*//' "$f" | awk '
      $1 == "deb" {
        i = 2
        if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
        if (i + 1 <= NF) print $i, $(i + 1)
      }'
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    awk '
      function flush(   n, m, i, j, u, s) {
        if (types ~ /(^|[ \t])deb([ \t]|$)/ && enabled != "no") {
          n = split(uris, u, /[ \t]+/); m = split(suites, s, /[ \t]+/)
          for (i = 1; i <= n; i++) for (j = 1; j <= m; j++) if (u[i] != "" && s[j] != "") print u[i], s[j]
        }
        types = uris = suites = key = ""; enabled = "yes"
      }
      BEGIN { enabled = "yes" }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      /^[ \t]/ { if (key == "uris") uris = uris " " $0; else if (key == "suites") suites = suites " " $0; next }
      {
        c = index($0, ":"); if (c == 0) next
        key = tolower(substr($0, 1, c - 1)); val = substr($0, c + 1); gsub(/^[ \t]+|[ \t]+$/, "", val)
        if (key == "types") types = val
        else if (key == "uris") uris = val
        else if (key == "suites") suites = val
        else if (key == "enabled") enabled = tolower(val)
      }
      END { flush() }' "$f"
  done
}

# The first URI apt uses for a suite.
apt_uri_for() {
  apt_sources | awk -v suite="$1" '$2 == suite { print $1; exit }'
}

if [ -z "$MIRROR" ]; then
  MIRROR=$(apt_uri_for "$SUITE")
  [ -n "$MIRROR" ] || die "no '$SUITE' source in this machine's apt configuration (/etc/apt/sources.list, /etc/apt/sources.list.d/); pass --mirror URL"
fi
[ -n "$SECURITY_MIRROR" ] || SECURITY_MIRROR=$(apt_uri_for "$SUITE-security")
UPDATES_MIRROR=$(apt_uri_for "$SUITE-updates")
[ -n "$UPDATES_MIRROR" ] || UPDATES_MIRROR=$MIRROR

# debootstrap downloads with wget, which honours http_proxy; apt in the chroot gets it as
# an option. Both follow the proxy the host's apt is configured with, if any.
APT_PROXY=""
eval "$(apt-config shell APT_PROXY Acquire::http::Proxy 2>/dev/null || true)"
if [ -n "$APT_PROXY" ] && [ -z "${http_proxy:-}" ]; then
  export http_proxy=$APT_PROXY
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/duomq-base.XXXXXX")
ROOTFS="$WORK/rootfs"
cleanup() {
  # A failed step may leave the chroot's /proc mounted; never delete through a mount.
  if mountpoint -q "$ROOTFS/proc" 2>/dev/null; then umount -l "$ROOTFS/proc" || true; fi
  rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT

# With --force, the image being replaced; removed once the new one has its tag.
OLD_ID=$(docker image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)

started=$(date +%s)
step "debootstrap $SUITE (minbase + ca-certificates) from $MIRROR into $ROOTFS"
"$DEBOOTSTRAP" --variant=minbase --include=ca-certificates "$SUITE" "$ROOTFS" "$MIRROR" 2>&1 |
  sed -u 's/^/  /'

{
  echo "deb $MIRROR $SUITE main"
  echo "deb $UPDATES_MIRROR $SUITE-updates main"
  if [ -n "$SECURITY_MIRROR" ]; then echo "deb $SECURITY_MIRROR $SUITE-security main"; fi
} >"$ROOTFS/etc/apt/sources.list"
if [ -n "$SECURITY_MIRROR" ]; then
  step "installing $SUITE-updates and $SUITE-security updates"
else
  step "warning: no $SUITE-security source found; installing $SUITE-updates only (see --security-mirror)"
fi
apt_in_chroot=(chroot "$ROOTFS" env DEBIAN_FRONTEND=noninteractive LC_ALL=C apt-get -q -o Dpkg::Use-Pty=0)
if [ -n "$APT_PROXY" ]; then apt_in_chroot+=(-o "Acquire::http::Proxy=$APT_PROXY"); fi
mount -t proc proc "$ROOTFS/proc"
"${apt_in_chroot[@]}" update 2>&1 | sed -u 's/^/  /'
"${apt_in_chroot[@]}" -y -o Dpkg::Options::=--force-confold upgrade 2>&1 | sed -u 's/^/  /'
"${apt_in_chroot[@]}" clean
umount "$ROOTFS/proc"

step "trimming: apt lists, caches, logs, docs (copyright files stay), man pages, locales"
(
  cd "$ROOTFS"
  rm -rf var/lib/apt/lists/* var/cache/apt/*.bin var/cache/debconf/*-old var/lib/dpkg/*-old
  find var/log -type f -delete
  find usr/share/doc -mindepth 1 -not -name copyright -not -type d -delete
  find usr/share/doc -mindepth 1 -type d -empty -delete
  rm -rf usr/share/man/* usr/share/info/* usr/share/lintian/*
  find usr/share/locale -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
  # Docker mounts its own at run time; the host's must not leak into the image.
  : >etc/resolv.conf
  : >etc/hostname
)

step "importing as $TAG"
tar --numeric-owner -C "$ROOTFS" -c . |
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    --change "LABEL org.opencontainers.image.title=duomq-base org.opencontainers.image.description=\"Minimal Debian $SUITE (debootstrap minbase) for duomq's images\"" \
    --message "debootstrap --variant=minbase $SUITE" \
    - "$TAG" >/dev/null

if [ -n "$OLD_ID" ] && [ "$OLD_ID" != "$(docker image inspect --format '{{.Id}}' "$TAG")" ]; then
  # Fails, harmlessly, while images built on the old base still exist.
  docker image rm "$OLD_ID" >/dev/null 2>&1 ||
    step "the previous $TAG ($OLD_ID) is still used by other images; kept"
fi

size=$(docker image inspect --format '{{.Size}}' "$TAG")
step "built $TAG ($((size / 1000000)) MB) in $(($(date +%s) - started))s"
