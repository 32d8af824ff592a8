#!/usr/bin/env bash
# Regenerate the bundled demo bag demo/bin_demo (how it is made: demo/README.md).
# Deterministic: the same seed gives the same pile, lighting, background and trajectory.
# Extra arguments go to `python -m hrpose_ros.demo_bag` (e.g. --frames 50, --keep-scene DIR).
set -eo pipefail
cd "$(dirname "$0")/.."
. ./env.sh  # before `set -u`: colcon's setup scripts read unset variables
set -u
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python -m hrpose_ros.demo_bag --out "$tmp/bin_demo" "$@"
rm -rf demo/bin_demo
mv "$tmp/bin_demo" demo/bin_demo
du -sh demo/bin_demo
