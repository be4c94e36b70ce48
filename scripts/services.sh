#!/usr/bin/env bash
# Make sure the PostgreSQL server binaries and redis-server are installed, for
# the integration tests (tests/test_integration.py, tests/test_dashboard.py).
#
# Idempotent: when `pg_ctl` (under /usr/lib/postgresql/*/bin) and
# `redis-server` are both there it does nothing. Otherwise, as root, it runs
# `apt-get update` once and `apt-get install -y postgresql redis-server`
# without starting the system services: a policy-rc.d that forbids starts is
# in place during the install, and on a machine booted with systemd the two
# units it installed are disabled, so nothing listens on 5432 or 6379. The
# tests start their own throwaway servers, on loopback and on random ports
# (scripts/pg_ctl_unprivileged.sh, tests/services.py).
set -euo pipefail

find_pg_ctl() {
    local candidate
    # Newest major version first.
    for candidate in $(ls -d /usr/lib/postgresql/*/bin/pg_ctl 2>/dev/null | sort -V -r); do
        if [ -x "$candidate" ]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

have_pg() { find_pg_ctl >/dev/null; }
have_redis() { command -v redis-server >/dev/null 2>&1; }

if have_pg && have_redis; then
    exit 0
fi

missing=()
have_pg || missing+=(postgresql)
have_redis || missing+=(redis-server)

fail() {
    echo "scripts/services.sh: the integration tests need PostgreSQL's server binaries" \
        "(pg_ctl under /usr/lib/postgresql/*/bin) and redis-server." >&2
    echo "scripts/services.sh: $1; install them with:" \
        "sudo apt-get install postgresql redis-server" >&2
    exit 1
}

if [ "$(id -u)" != 0 ]; then
    fail "missing: ${missing[*]}, and not running as root"
fi
if ! command -v apt-get >/dev/null 2>&1; then
    fail "missing: ${missing[*]}, and apt-get is not available"
fi

echo "scripts/services.sh: installing ${missing[*]} (apt-get; system services left stopped)"

# Keep invoke-rc.d from starting the services during the install; only our
# own policy-rc.d is removed afterwards.
policy=/usr/sbin/policy-rc.d
ours=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# scripts/services.sh: no service starts during install\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    ours=1
fi
cleanup() { if [ "$ours" = 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
if ! apt-get update -q; then
    fail "apt-get update failed"
fi
if ! apt-get install -y -q --no-install-recommends postgresql redis-server; then
    fail "apt-get install failed"
fi

# Stop and disable whatever got started anyway (systemd, or a policy-rc.d
# that was already there and allowed starts).
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    for unit in "${missing[@]}"; do
        systemctl disable --now "$unit" >/dev/null 2>&1 || true
    done
else
    for unit in "${missing[@]}"; do
        if [ -x "/etc/init.d/$unit" ]; then
            "/etc/init.d/$unit" stop >/dev/null 2>&1 || true
        fi
    done
fi

if ! have_pg || ! have_redis; then
    fail "still missing after apt-get install"
fi
echo "scripts/services.sh: pg_ctl at $(find_pg_ctl), redis-server at $(command -v redis-server)"
