#!/bin/sh
# Debian packages the test suite runs for real: promtool/prometheus, redis-server, wrk,
# node/npm (Kubernetes schema check, `make node-deps`), systemd-analyze (the unit file),
# amtool (the demo Alertmanager config), valgrind (bench/callgrind.py).
# Installs them when missing and this is root on a Debian-like system; otherwise says what
# is missing (tests that need them skip locally and fail in CI, where CI=true). A failed
# installation (no network) does not stop `make test` either, except in CI.
set -eu
PACKAGES="prometheus redis-server wrk nodejs npm systemd prometheus-alertmanager valgrind"
missing=""
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
command -v wrk >/dev/null 2>&1 || missing="$missing wrk"
command -v npm >/dev/null 2>&1 || missing="$missing nodejs npm"
command -v systemd-analyze >/dev/null 2>&1 || missing="$missing systemd"
command -v amtool >/dev/null 2>&1 || missing="$missing prometheus-alertmanager"
command -v valgrind >/dev/null 2>&1 || missing="$missing valgrind"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: installing$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086
    if apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends $missing >/dev/null 2>&1; then
        exit 0
    fi
    # no network or no package source: the suite still runs, as without root
    echo "system-deps: could not install$missing (apt-get failed: no network?); tests needing them will skip" >&2
    [ "${CI:-}" != true ] || exit 1
else
    echo "system-deps: missing$missing (apt-get install $PACKAGES as root); tests needing them will skip" >&2
fi
