#!/usr/bin/env bash
# RFC 6455 conformance: runs the Autobahn TestSuite's server cases (its
# fuzzingclient case files, driven from Python 3 by `kosoku`) against the
# echo endpoint of a real `switchboard serve --echo-path /echo`, then writes
# the summary table into docs/conformance.md (between the "autobahn:begin"
# and "autobahn:end" markers; the text around them is kept).
#
#   scripts/autobahn.sh                       # sections 1-7 and 10 (the required ones)
#   AUTOBAHN_CASES="1.* 9.*" scripts/autobahn.sh   # any selection (9.* takes about a minute)
#   AUTOBAHN_DOC=target/autobahn/summary.md scripts/autobahn.sh   # leave docs/ alone
#
# Other settings: SWITCHBOARD_BIN (a built binary; default: build the
# workspace and use target/debug/switchboard), AUTOBAHN_REPORTS (report
# directory, default target/autobahn/reports; index.html there is Autobahn's
# browsable report), AUTOBAHN_PARALLELISM (cases at once, default 2).
#
# Exits non-zero if any case fails: a verdict other than OK, NON-STRICT or
# INFORMATIONAL for the exchange, or other than OK or INFORMATIONAL for the
# close. Needs `pip install kosoku`. Loopback only; bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."

CASES=${AUTOBAHN_CASES:-1.* 2.* 3.* 4.* 5.* 6.* 7.* 10.*}
REPORTS=${AUTOBAHN_REPORTS:-target/autobahn/reports}
DOC=${AUTOBAHN_DOC:-docs/conformance.md}
PARALLELISM=${AUTOBAHN_PARALLELISM:-2}
# The whole selection must finish within this many seconds.
RUN_TIMEOUT=${AUTOBAHN_TIMEOUT:-600}

if ! python3 -c 'import kosoku' 2>/dev/null; then
  echo "autobahn.sh: the kosoku package is missing; install it with: python3 -m pip install kosoku" >&2
  exit 2
fi

if [ -n "${SWITCHBOARD_BIN:-}" ]; then
  BIN=$SWITCHBOARD_BIN
else
  echo "== building" >&2
  # --all-targets, as the tests build it: other flags would rebuild with other features.
  cargo build --workspace --all-targets >&2
  BIN=target/debug/switchboard
fi

WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# Rate limits off (the suite sends bursts of frames), and messages up to
# 16 MiB so that section 9 can run too when selected.
NO_COLOR=1 RUST_LOG=info "$BIN" serve --listen 127.0.0.1:0 --echo-path /echo \
  --rate-messages-per-sec 0 --rate-bytes-per-sec 0 \
  --max-message-bytes 16777216 --max-queued-bytes 67108864 \
  2> "$WORK/server.log" &
SERVER_PID=$!

ADDR=
for _ in $(seq 1 300); do
  ADDR=$(sed -n 's/.*listening.*addr=\([0-9.:]*\).*/\1/p' "$WORK/server.log" | head -n 1)
  [ -n "$ADDR" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$ADDR" ]; then
  echo "autobahn.sh: the server did not start:" >&2
  cat "$WORK/server.log" >&2
  exit 1
fi
URL="ws://$ADDR/echo"

SELECT=()
for case in $CASES; do SELECT+=(-i "$case"); done
rm -rf "$REPORTS"
mkdir -p "$REPORTS"
echo "== kosoku against $URL: $CASES" >&2
status=0
# kosoku exits 1 when a case fails; the summary below reports which.
if command -v kosoku >/dev/null 2>&1; then
  KOSOKU=(kosoku)
else
  # pip may have put the console script outside PATH; the module is the same.
  KOSOKU=(python3 -c 'import sys; from kosoku._cli import main; sys.argv[0] = "kosoku"; main()')
fi
timeout "$RUN_TIMEOUT" "${KOSOKU[@]}" "$URL" "${SELECT[@]}" -p "$PARALLELISM" -o "$REPORTS" >&2 \
  || status=$?
if [ ! -f "$REPORTS/index.json" ]; then
  echo "autobahn.sh: kosoku wrote no report (exit $status)" >&2
  tail -n 20 "$WORK/server.log" >&2
  exit 1
fi

KOSOKU_VERSION=$(python3 -c 'import importlib.metadata as m; print(m.version("kosoku"))')
SERVER_VERSION=$("$BIN" --version)
python3 - "$REPORTS/index.json" "$DOC" "$CASES" "$KOSOKU_VERSION" "$SERVER_VERSION" <<'PY'
import json
import sys
from collections import defaultdict

index_path, doc_path, selection, kosoku_version, server_version = sys.argv[1:6]
with open(index_path) as f:
    index = json.load(f)
results = {case: verdict for agent in index.values() for case, verdict in agent.items()}

PASS = {"OK", "NON-STRICT", "INFORMATIONAL"}
PASS_CLOSE = {"OK", "INFORMATIONAL"}
TITLES = {
    "1": "Framing (text and binary, all payload sizes)",
    "2": "Pings and pongs",
    "3": "Reserved bits",
    "4": "Opcodes (reserved and unknown)",
    "5": "Fragmentation",
    "6": "UTF-8 handling",
    "7": "Close handling",
    "9": "Limits and performance",
    "10": "Misc (auto-fragmentation)",
    "12": "permessage-deflate",
    "13": "permessage-deflate",
}

def key(case):
    return [int(part) for part in case.split(".")]

sections = defaultdict(lambda: defaultdict(int))
notes, failures = [], []
for case in sorted(results, key=key):
    verdict = results[case]
    behavior, close = verdict["behavior"], verdict["behaviorClose"]
    counts = sections[case.split(".")[0]]
    counts["cases"] += 1
    ok = behavior in PASS and close in PASS_CLOSE
    if not ok:
        counts["failed"] += 1
        failures.append(f"| {case} | {behavior} | {close} | {verdict.get('remoteCloseCode')} |")
    else:
        counts[behavior] += 1
        if (behavior, close) != ("OK", "OK"):
            notes.append(f"| {case} | {behavior} | {close} | {verdict.get('remoteCloseCode')} |")

lines = [
    f"Run by `scripts/autobahn.sh` with kosoku {kosoku_version} against "
    f"`{server_version}` (`serve --echo-path /echo`), cases `{selection}`.",
    "",
    "| section | what | cases | OK | NON-STRICT | INFORMATIONAL | failed |",
    "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
]
total = defaultdict(int)
for section in sorted(sections, key=int):
    c = sections[section]
    for k, v in c.items():
        total[k] += v
    lines.append(
        f"| {section} | {TITLES.get(section, '')} | {c['cases']} | {c['OK']} | "
        f"{c['NON-STRICT']} | {c['INFORMATIONAL']} | {c['failed']} |"
    )
lines.append(
    f"| **all** | | **{total['cases']}** | **{total['OK']}** | **{total['NON-STRICT']}** | "
    f"**{total['INFORMATIONAL']}** | **{total['failed']}** |"
)
if notes:
    lines += ["", "Passing cases whose verdict is not plain OK:", "",
              "| case | behavior | close | server's close code |", "| --- | --- | --- | --- |"]
    lines += notes
if failures:
    lines += ["", "**Failed cases:**", "",
              "| case | behavior | close | server's close code |", "| --- | --- | --- | --- |"]
    lines += failures
table = "\n".join(lines)

begin, end = "<!-- autobahn:begin -->", "<!-- autobahn:end -->"
try:
    with open(doc_path) as f:
        doc = f.read()
except FileNotFoundError:
    doc = ""
if begin in doc and end in doc:
    head, rest = doc.split(begin, 1)
    tail = rest.split(end, 1)[1]
    doc = f"{head}{begin}\n{table}\n{end}{tail}"
else:
    doc = f"# Autobahn summary\n\n{begin}\n{table}\n{end}\n"
with open(doc_path, "w") as f:
    f.write(doc)

print(table)
print(f"\nautobahn: {total['cases'] - total['failed']} cases passed, {total['failed']} failed")
sys.exit(1 if failures else 0)
PY
