#!/usr/bin/env bash
# Builds the PostgreSQL image of duomq's end-to-end tests (shared-database mode) from
# Debian's postgresql-15 on the local base image: nothing comes from a container registry.
set -euo pipefail

IMAGES_DIR=$(cd "$(dirname "$0")" && pwd)
DEFAULT_BASE=duomq-base:bookworm
TAG=duomq/postgres:15
BASE=""
FORCE=false
# The image records which files it was built from; an image built from these same files is
# kept (see --force).
LABEL=io.duomq.dockerfile-sha256

usage() {
  cat <<USAGE
Usage: images/build-postgres.sh [--tag TAG] [--base IMAGE] [--force]

Builds $TAG from images/postgres.Dockerfile and images/postgres-entrypoint.sh: Debian
bookworm's postgresql-15, installed with apt during the build (the build needs the Debian
mirror of the base image's apt sources). The entrypoint follows the official postgres
image's contract: POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, PGDATA, port 5432.

Does nothing when $TAG was built from the same two files already, unless --force.

Options:
  --tag TAG     image name (default: $TAG)
  --base IMAGE  base image (default: $DEFAULT_BASE, the local minimal Debian that
                images/build-base.sh builds; built first if missing)
  --force       rebuild even if the image is current
  -h, --help    show this help
USAGE
}

die() {
  echo "build-postgres: error: $*" >&2
  exit 1
}

step() {
  echo "build-postgres: $*"
}

while [ $# -gt 0 ]; do
  case "$1" in
    --tag) [ $# -ge 2 ] || die "--tag needs a value"; TAG=$2; shift 2 ;;
    --base) [ $# -ge 2 ] || die "--base needs an image"; BASE=$2; shift 2 ;;
    --force) FORCE=true; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

command -v docker >/dev/null 2>&1 || die "docker is not installed: install Docker Engine (your distribution's Docker package)"
docker info >/dev/null 2>&1 || die "the Docker daemon is unreachable: start it (systemctl start docker, or dockerd) or set DOCKER_HOST"

sources=$(cat "$IMAGES_DIR/postgres.Dockerfile" "$IMAGES_DIR/postgres-entrypoint.sh" | sha256sum | cut -d' ' -f1)
current=$(docker image inspect --format "{{index .Config.Labels \"$LABEL\"}}" "$TAG" 2>/dev/null || true)
if [ "$current" = "$sources" ] && [ "$FORCE" = false ]; then
  step "$TAG is current (built from these files); nothing to do (use --force to rebuild)"
  exit 0
fi

if [ -z "$BASE" ]; then
  BASE=$DEFAULT_BASE
  if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    step "base image $BASE is missing; building it with images/build-base.sh"
    "$IMAGES_DIR/build-base.sh" --tag "$BASE"
  fi
fi

CONTEXT=$(mktemp -d "${TMPDIR:-/tmp}/duomq-image-postgres.XXXXXX")
trap 'rm -rf "$CONTEXT"' EXIT
cp "$IMAGES_DIR/postgres-entrypoint.sh" "$CONTEXT/postgres-entrypoint.sh"
chmod 0755 "$CONTEXT/postgres-entrypoint.sh"
step "building $TAG on $BASE"
started=$(date +%s)
docker build --file "$IMAGES_DIR/postgres.Dockerfile" --build-arg "BASE=$BASE" --label "$LABEL=$sources" --tag "$TAG" "$CONTEXT"
step "built $TAG ($(($(docker image inspect --format '{{.Size}}' "$TAG") / 1000000)) MB) in $(($(date +%s) - started))s"
