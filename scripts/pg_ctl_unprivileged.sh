#!/usr/bin/env bash
# pg_ctl for the tests' throwaway PostgreSQL servers (tests/services.py hands
# this script to pytest-postgresql's executor as its `pg_ctl`).
#
# PostgreSQL refuses to run as root (pg_ctl, initdb and postgres all check
# the effective uid). When called as root, this runs pg_ctl as the
# unprivileged `postgres` user that Debian's package creates
# (PG_TEST_OS_USER overrides it), with setpriv: no PAM session, the
# environment kept. The data directory, log file and socket directory it is
# given must be owned by that user: tests/services.py makes them so. Called
# as anyone else, it runs pg_ctl directly.
# TWISTED_SHIM_PG_CTL overrides which pg_ctl is run; without it, the newest
# under /usr/lib/postgresql (Debian's layout), else the one on PATH.
set -euo pipefail

pg_ctl=${TWISTED_SHIM_PG_CTL:-}
if [ -z "$pg_ctl" ]; then
    pg_ctl=$(ls -d /usr/lib/postgresql/*/bin/pg_ctl 2>/dev/null | sort -V | tail -n 1 || true)
fi
if [ -z "$pg_ctl" ]; then
    pg_ctl=$(command -v pg_ctl || true)
fi
if [ -z "$pg_ctl" ] || [ ! -x "$pg_ctl" ]; then
    echo "pg_ctl_unprivileged.sh: no pg_ctl under /usr/lib/postgresql/*/bin" \
        "nor on PATH (run scripts/services.sh)" >&2
    exit 127
fi

if [ "$(id -u)" = 0 ]; then
    user=${PG_TEST_OS_USER:-postgres}
    # The server's working directory: it must be able to enter it.
    cd /
    exec setpriv --reuid="$user" --regid="$user" --init-groups -- "$pg_ctl" "$@"
fi
exec "$pg_ctl" "$@"
