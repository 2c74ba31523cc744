#!/usr/bin/env bash
# Installs the build tree into a scratch prefix, then configures, builds and runs a separate
# project that uses find_package(idem).
set -euo pipefail
build_dir=$1 source_dir=$2 work=$3
rm -rf "$work"
cmake --install "$build_dir" --prefix "$work/prefix" >/dev/null
cmake -S "$source_dir" -B "$work/consumer" -G Ninja -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
cmake --build "$work/consumer" >/dev/null
"$work/consumer/consumer" memory:
if [ -x "$work/consumer/consumer" ] && grep -q CONSUMER_HAS_SQLITE "$work/consumer/CMakeFiles/consumer.dir/flags.make" 2>/dev/null; then
  "$work/consumer/consumer" "sqlite:$work/consumer.db"
fi
