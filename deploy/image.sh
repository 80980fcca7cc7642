#!/usr/bin/env bash
# `make image`: build the container image with podman (docker where podman is missing),
# then report its size. The wheels are built on the host into the build context
# (build/image/), so the image build itself runs without network.
#
#   BASE=IMAGE        base image with Python 3 (default: the official Python slim image;
#                     on a machine without a registry: BASE=$(deploy/base-image.sh))
#   TAG=NAME          the image's name (default asyncinvoke:latest)
#   PYTHON_VERSION    the base image's Python, for the wheels (default 3.11)
#   ENGINE            podman or docker (default: podman if installed)
#   PODMAN_FLAGS      podman's global flags (default: runc with cgroupfs, as measured on
#                     the project's machines, where crun fails on hybrid cgroups)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

BASE=${BASE:-docker.io/library/python:3.11-slim}
TAG=${TAG:-asyncinvoke:latest}
PYTHON_VERSION=${PYTHON_VERSION:-3.11}
if [ -z "${ENGINE:-}" ]; then
    if command -v podman >/dev/null; then ENGINE=podman; else ENGINE=docker; fi
fi
if [ "$ENGINE" = podman ]; then
    engine=(podman ${PODMAN_FLAGS---runtime runc --cgroup-manager cgroupfs})
    # HEALTHCHECK exists only in the Docker image format.
    build_flags=(--format docker)
else
    engine=(docker)
    build_flags=()
fi
python=${PYTHON:-$root/.venv/bin/python}
[ -x "$python" ] || python=python3

context=build/image
deps=$context/wheels/deps
project=$context/wheels/project
mkdir -p "$deps/installer" "$project"

# The project's wheel, from a clean copy of the sources (no stale build/ of setuptools),
# with a setuptools of its own kept in build/ (build isolation would install one each time).
builder=build/wheel-builder
if ! "$builder/bin/python" -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 68)' 2>/dev/null; then
    "$python" -m venv --clear "$builder"
    "$builder/bin/python" -m pip install --quiet 'setuptools>=68' wheel >&2
fi
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
cp -r pyproject.toml README.md service "$src"/
rm -f "$project"/*.whl
"$builder/bin/python" -m pip wheel --quiet --no-deps --no-build-isolation \
    --wheel-dir "$project" "$src" >&2
project_wheel=$(ls "$project"/asyncinvoke-*.whl)

# The dependencies as binary wheels for the image's Python and platform (not the host's),
# downloaded again only when pyproject.toml or the target changes; pip itself as a wheel
# to run the install with.
arch=$(uname -m)
key="$(sha256sum pyproject.toml | cut -c1-16) $PYTHON_VERSION $arch"
if [ "$(cat "$deps/.key" 2>/dev/null)" != "$key" ]; then
    rm -rf "$deps" && mkdir -p "$deps/installer"
    platforms=()
    for minor in $(seq 5 36); do platforms+=(--platform "manylinux_2_${minor}_$arch"); done
    platforms+=(--platform "manylinux2014_$arch" --platform "manylinux2010_$arch"
                --platform "manylinux1_$arch")
    "$python" -m pip download --quiet --only-binary=:all: --implementation cp \
        --python-version "$PYTHON_VERSION" "${platforms[@]}" \
        --dest "$deps" "$project_wheel[uvloop]" >&2
    "$python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$deps/installer" \
        'pip>=23.1' >&2
    rm -f "$deps"/asyncinvoke-*.whl
    mv "$deps"/installer/pip-*.whl "$deps/installer/pip.whl"
    # Exactly the versions downloaded (name-version-...whl).
    for wheel in "$deps"/*.whl; do
        name=$(basename "$wheel" | cut -d- -f1-2)
        echo "${name%-*}==${name##*-}"
    done > "$deps/requirements.txt"
    echo "$key" > "$deps/.key"
fi

cp deploy/container/entrypoint.sh deploy/container/healthcheck.py "$context"/
rm -rf "$context/examples" && mkdir -p "$context/examples"
cp examples/functions.toml examples/handlers.py "$context/examples/"

# --network=none: the build must not need the network (the wheels are in the context).
build() {
    "${engine[@]}" build "${build_flags[@]}" --network=none \
        --ulimit nofile=1024:4096 --ulimit nproc=1024:2048 \
        --build-arg "BASE=$BASE" -f deploy/Dockerfile "$@" "$context" >&2
}
# The dependencies' stage, tagged by what goes into it: kept as a cache that removing the
# image does not remove (its untagged layers would go with it).
base_id=$("${engine[@]}" image inspect --format '{{.Id}}' "$BASE" 2>/dev/null || echo "$BASE")
deps_key=$({ cat "$deps/requirements.txt"; sed "/^FROM deps AS build/q" deploy/Dockerfile; echo "$base_id"; } | sha256sum | cut -c1-16)
build --target deps -t "localhost/asyncinvoke-deps:$deps_key"
build -t "$TAG"

size=$("${engine[@]}" image inspect --format '{{.Size}}' "$TAG")
echo "$TAG: $((size / 1000000)) MB (base $BASE)" >&2
echo "$TAG"
