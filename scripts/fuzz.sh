#!/usr/bin/env bash
# Fuzzes every parser that sees client bytes (issue 5) with cargo-fuzz
# (libFuzzer), each target for a bounded time, then reports.
#
#   scripts/fuzz.sh                    # every target, 60 s each
#   scripts/fuzz.sh classic config     # some targets
#   FUZZ_SECS=600 scripts/fuzz.sh      # longer
#
# Targets (fuzz/Cargo.toml; what each checks is in fuzz/checks.rs):
# v1_request, binary_header, classic, config. Seeds are read from
# fuzz/corpus/TARGET/ and fuzz/regressions/TARGET/; what the fuzzer learns
# goes to target/fuzz-corpus/TARGET/ so the committed corpus stays small.
#
# On a failure libFuzzer saves the input under fuzz/artifacts/TARGET/. Rerun
# it with `cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-...`,
# shrink it with `cargo +nightly fuzz tmin TARGET ...`, fix the parser, and
# copy it to fuzz/regressions/TARGET/: the stable test
# crates/switchboard/tests/it/fuzz_regressions.rs then replays it on every run.
#
# Needs the nightly toolchain (installed here with rustup if missing) and
# cargo-fuzz (installed with cargo if missing). Exits non-zero if any target
# found a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${FUZZ_SECS:-60}
TOOLCHAIN=${FUZZ_TOOLCHAIN:-nightly}

if ! rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1; then
  echo "== installing the $TOOLCHAIN toolchain" >&2
  rustup toolchain install "$TOOLCHAIN" --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

if [ $# -gt 0 ]; then
  TARGETS=("$@")
else
  mapfile -t TARGETS < <(cargo "+$TOOLCHAIN" fuzz list)
fi

failed=()
for target in "${TARGETS[@]}"; do
  scratch=target/fuzz-corpus/$target
  mkdir -p "$scratch" "fuzz/corpus/$target" "fuzz/regressions/$target"
  echo "== fuzzing $target for ${SECS}s" >&2
  # -timeout: one input taking over 10 s is a finding (a parser must not hang);
  # -max_len: frames are bounded by the server's limits, 64 KiB reaches every branch.
  if cargo "+$TOOLCHAIN" fuzz run "$target" "$scratch" "fuzz/corpus/$target" "fuzz/regressions/$target" -- \
      -max_total_time="$SECS" -max_len=65536 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1; then
    echo "== $target: no failure in ${SECS}s" >&2
  else
    echo "== $target: FAILED; the input is in fuzz/artifacts/$target/" >&2
    failed+=("$target")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: failures in: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz.sh: ${#TARGETS[@]} targets fuzzed for ${SECS}s each, no failure" >&2
