#!/usr/bin/env bash
# Coverage-guided fuzzing of the request parser (head parser and chunked
# decoder, src/http/parse.rs) with cargo-fuzz and libFuzzer, for as long as
# asked: `make fuzz FUZZ_SECONDS=3600`. The target and the properties it
# checks: fuzz/fuzz_targets/request.rs. The corpus grows in fuzz/corpus/
# (not committed; fuzz/seeds/ is); a crash leaves its input in
# fuzz/artifacts/request/ and fails the run.
set -euo pipefail
seconds="${1:-300}"
cd "$(dirname "$0")/../fuzz"

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz: cargo-fuzz needs a nightly toolchain; installing one with rustup" >&2
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz
fi

mkdir -p corpus/request
echo "fuzz: request parser for ${seconds} s (corpus: fuzz/corpus/request)"
exec cargo +nightly fuzz run request corpus/request seeds/request -- \
    -max_total_time="${seconds}" -max_len=8192 -print_final_stats=1
