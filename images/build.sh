#!/usr/bin/env bash
# Builds duomq's container images from binaries compiled on this machine. The Docker build
# context is a temp dir holding only the binary, so it is small and nothing else from the
# working tree leaks into an image.
set -euo pipefail

IMAGES_DIR=$(cd "$(dirname "$0")" && pwd)
REPO_DIR=$(cd "$IMAGES_DIR/.." && pwd)
DEFAULT_BASE=duomq-base:bookworm

usage() {
  cat <<EOF
Usage: images/build.sh [broker|operator|all] [--binary PATH] [--base IMAGE] [--tag TAG]

Builds the duomq container images (default: all):
  broker    duomq/broker:VERSION    from images/broker.Dockerfile
  operator  duomq/operator:VERSION  from images/operator.Dockerfile
  (VERSION: the workspace version in Cargo.toml, the tag the operator and chart expect)

The binaries are not compiled in Docker: build them first, for example
  cargo build --release -p duomq-broker -p duomq-operator
Binaries built on Debian 12 need a Debian bookworm base (same glibc).

Options:
  --binary PATH  binary to put into the image (default: target/release/duomq-<name>
                 under the repository, or under \$CARGO_TARGET_DIR when set);
                 only with broker or operator, not all
  --base IMAGE   base image, passed as --build-arg BASE (default: $DEFAULT_BASE,
                 the local minimal Debian that images/build-base.sh builds; built here
                 first if it is missing). Any bookworm image works, e.g. debian:bookworm-slim
                 where a registry is reachable.
  --tag TAG      image name (default: duomq/<name>:VERSION); only with broker or operator
  -h, --help     show this help

Examples:
  images/build.sh                                   both images from release binaries
  images/build.sh broker --binary target/debug/duomq-broker --tag duomq/broker:test
EOF
}

die() {
  echo "build: error: $*" >&2
  exit 1
}

step() {
  echo "build: $*"
}

WHAT=""
BINARY=""
BASE=""
TAG=""
while [ $# -gt 0 ]; do
  case "$1" in
    broker | operator | all)
      [ -z "$WHAT" ] || die "give one of broker, operator, all (got '$WHAT' and '$1')"
      WHAT=$1; shift ;;
    --binary) [ $# -ge 2 ] || die "--binary needs a path"; BINARY=$2; shift 2 ;;
    --base) [ $# -ge 2 ] || die "--base needs an image"; BASE=$2; shift 2 ;;
    --tag) [ $# -ge 2 ] || die "--tag needs a value"; TAG=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
WHAT=${WHAT:-all}
if [ "$WHAT" = all ]; then
  [ -z "$BINARY" ] || die "--binary names one binary: use it with broker or operator, not all"
  [ -z "$TAG" ] || die "--tag names one image: use it with broker or operator, not all"
fi

command -v docker >/dev/null 2>&1 || die "docker is not installed: install Docker Engine (your distribution's Docker package)"
docker info >/dev/null 2>&1 || die "the Docker daemon is unreachable: start it (systemctl start docker, or dockerd) or set DOCKER_HOST"

if [ -z "$BASE" ]; then
  BASE=$DEFAULT_BASE
  if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    step "base image $BASE is missing; building it with images/build-base.sh"
    "$IMAGES_DIR/build-base.sh" --tag "$BASE"
  fi
fi

REVISION=$(git -C "$REPO_DIR" rev-parse HEAD 2>/dev/null || true)
VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$REPO_DIR/Cargo.toml")
[ -n "$VERSION" ] || die "could not read the workspace version from Cargo.toml"
CONTEXT=""
trap '[ -z "$CONTEXT" ] || rm -rf "$CONTEXT"' EXIT

# build_image NAME: builds duomq/NAME from images/NAME.Dockerfile and duomq-NAME.
build_image() {
  local name=$1 exe="duomq-$1" binary tag started sha256
  binary=${BINARY:-${CARGO_TARGET_DIR:-$REPO_DIR/target}/release/$exe}
  tag=${TAG:-duomq/$name:$VERSION}
  [ -f "$binary" ] || die "no $exe binary at $binary: build it with 'cargo build --release -p $exe' (or pass --binary PATH)"
  [ -x "$binary" ] || die "$binary is not executable"

  CONTEXT=$(mktemp -d "${TMPDIR:-/tmp}/duomq-image-$name.XXXXXX")
  cp "$binary" "$CONTEXT/$exe"
  chmod 0755 "$CONTEXT/$exe"
  step "$name: building $tag on $BASE from $binary ($(($(stat -c %s "$binary") / 1000000)) MB)"
  started=$(date +%s)
  local args=(--file "$IMAGES_DIR/$name.Dockerfile" --build-arg "BASE=$BASE" --tag "$tag")
  if [ -n "$REVISION" ]; then args+=(--label "org.opencontainers.image.revision=$REVISION"); fi
  # Which binary and Dockerfile the image was built from: `duomq-e2e up` and the tests reuse
  # an image only when these labels match what they would build (a tag says nothing of it).
  sha256=$(sha256sum "$binary" | cut -d' ' -f1)
  args+=(--label "io.duomq.binary-sha256=$sha256")
  args+=(--label "io.duomq.dockerfile-sha256=$(sha256sum "$IMAGES_DIR/$name.Dockerfile" | cut -d' ' -f1)")
  docker build "${args[@]}" "$CONTEXT"
  rm -rf "$CONTEXT"
  CONTEXT=""
  step "$name: built $tag ($(($(docker image inspect --format '{{.Size}}' "$tag") / 1000000)) MB, binary sha256 ${sha256:0:12}) in $(($(date +%s) - started))s"
}

case "$WHAT" in
  all) build_image broker; build_image operator ;;
  *) build_image "$WHAT" ;;
esac
