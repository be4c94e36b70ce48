#!/usr/bin/env bash
# `make test-pythons`: for every CPython 3.11+ on PATH (or under pyenv) other
# than the one in
# .venv: build the extension for it and run the reactor, transport, asyncio face, HTTP,
# PEP 3333, pause_output and CLI tests and Twisted's ReactorBuilder suites
# there.
#
# Each version gets its own virtualenv (.venv-py3.N) with what those tests
# import. The extension modules of different versions live side by side in
# twisted_shim/ (their file names carry the ABI tag), so the editable
# installs do not disturb each other. Not part of `make test`: a fresh
# machine may have a single Python.
set -euo pipefail
cd "$(dirname "$0")/.."

main=$(.venv/bin/python -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
tested=()
for minor in 11 12 13 14; do
    version="3.$minor"
    [ "$version" = "$main" ] && continue
    py=""
    # On PATH, or installed by pyenv without being its global version (whose
    # shims then refuse to run it).
    for candidate in "$(command -v "python$version" || true)" \
        "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/"python$version"; do
        if [ -n "$candidate" ] && [ -x "$candidate" ] && "$candidate" -c 'pass' 2>/dev/null; then
            py=$candidate
        fi
    done
    [ -n "$py" ] || continue
    venv=".venv-py$version"
    echo "== Python $version ($py)"
    [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q "twisted[tls,conch,http2]==26.10.0" pyhamcrest hypothesis \
        "maturin>=1.9.4,<2" "pytest>=8" h11 treq
    VIRTUAL_ENV="$PWD/$venv" PATH="$PWD/$venv/bin:$PATH" "$venv/bin/maturin" develop --release -q
    "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/test_reactor.py \
        tests/test_tcp_transport.py tests/test_unix_transport.py \
        tests/test_http_protocol.py tests/test_pep3333.py tests/test_pause_output.py \
        tests/test_cli.py tests/test_threaded.py tests/test_twist_plugin.py \
        tests/test_aio.py tests/test_aio_socket.py
    "$venv/bin/python" -m conformance.run_builders
    tested+=("$version")
done
if [ ${#tested[@]} -eq 0 ]; then
    echo "no other CPython 3.11+ found on PATH (python3.11 ... python3.14)" >&2
    exit 1
fi
echo "passed on Python ${tested[*]} (and $main in make test)"
