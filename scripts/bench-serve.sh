#!/usr/bin/env bash
# Benchmark: does `offsite serve` under a load of status requests slow a
# running backup? (issue 12: 200 concurrent status requests must neither
# fail nor slow a running backup by more than 10%.)
#
# usage: scripts/bench-serve.sh [SIZE_MIB] [TRIALS]   (default 256 MiB, 3 trials;
#                                                     results in bench-out/serve.md)
#        BENCH_BIN=path/to/offsite scripts/bench-serve.sh   (that binary, not a new build)
#
# One `offsite serve` runs throughout, on a free 127.0.0.1 port, for a
# config whose target already holds 30 snapshots of a second, small source
# (so a status request has real work: list, fetch and decrypt manifests).
# Each trial restores that seeded repository and times a full backup of the
# large source three ways: with the server idle; while 200 clients (wrk
# connections) each ask GET /api/v1/status once a second, 200 monitors
# polling at once, the load issue 12 bounds; and while the 200 connections
# ask without pause (a flood: wrk itself then takes one of the two cores, so
# that row says what a saturating client costs, not the server alone). The
# three kinds alternate so drift hits all; medians are compared, with the
# requests answered and any that failed.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-256}
TRIALS=${2:-3}
OUT=${BENCH_DIR:-$PWD/bench-out}/serve
rm -rf "$OUT"; mkdir -p "$OUT"

scripts/install-test-deps.sh
command -v wrk >/dev/null || { apt-get update -qq >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
if [ -z "${BENCH_BIN:-}" ]; then cargo build --release -q -p offsite; fi
BIN=${BENCH_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/offsite}

echo "generating a ${SIZE} MiB database..." >&2
python3 scripts/gen-db.py "$OUT/app.db" "$SIZE"
python3 scripts/gen-db.py "$OUT/small.db" 1

"$BIN" keygen -o "$OUT/key.txt" > "$OUT/recipient.txt" 2>/dev/null
TOKEN_LINES=$("$BIN" serve hash-token 2>/dev/null)
TOKEN=$(sed -n 1p <<<"$TOKEN_LINES")
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$OUT/offsite.toml" <<TOML
[encryption]
recipients = ["$(cat "$OUT/recipient.txt")"]
identity_file = "key.txt"
[[sources]]
name = "app"
kind = "sqlite"
path = "app.db"
[[sources]]
name = "small"
kind = "sqlite"
path = "small.db"
[[targets]]
name = "local"
kind = "local"
path = "repo"
[serve]
listen = "127.0.0.1:$PORT"
[[serve.tokens]]
name = "bench"
scopes = ["read"]
$(sed -n 2p <<<"$TOKEN_LINES")
TOML
run() { "$BIN" -c "$OUT/offsite.toml" "$@"; }

echo "seeding the repository with 30 snapshots of the small source..." >&2
for _ in $(seq 30); do
  python3 scripts/gen-db.py "$OUT/small.db" --change 5
  run backup --source small >/dev/null 2>&1
done
cp -a "$OUT/repo" "$OUT/seed"

"$BIN" -c "$OUT/offsite.toml" serve > "$OUT/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
curl -sf -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PORT/api/v1/status" > "$OUT/status.json"

# One trial: a fresh copy of the seeded repository, then a timed full backup
# of the large source, with wrk running alongside when $1 is "loaded".
trial() { # quiet|loaded
  rm -rf "$OUT/repo"; cp -a "$OUT/seed" "$OUT/repo"
  sync
  local wrk="" script=()
  [ "$1" = polled ] && script=(-s "$OUT/poll.lua")
  if [ "$1" != quiet ]; then
    wrk -t1 -c200 -d600s --timeout 60s "${script[@]}" -H "Authorization: Bearer $TOKEN" \
      "http://127.0.0.1:$PORT/api/v1/status" > "$OUT/wrk-$1-$2.txt" 2>&1 &
    wrk=$!
    sleep 1  # let all 200 connections open before the backup starts
  fi
  /usr/bin/time -f "$1 %e" -a -o "$OUT/times" "$BIN" -c "$OUT/offsite.toml" backup --source app >/dev/null 2>&1
  if [ -n "$wrk" ]; then kill -INT "$wrk"; wait "$wrk" || true; fi
}
# Each connection waits a second between its requests.
echo 'function delay() return 1000 end' > "$OUT/poll.lua"
for i in $(seq "$TRIALS"); do
  echo "trial $i of $TRIALS..." >&2
  trial quiet "$i"
  trial polled "$i"
  trial flood "$i"
done
kill $SERVER; wait $SERVER || true

python3 - "$OUT" "$SIZE" <<'PY' | tee "$OUT/../serve.md"
import re, statistics, sys, glob
out, size = sys.argv[1], sys.argv[2]
t = {"quiet": [], "polled": [], "flood": []}
for line in open(f"{out}/times"):
    kind, secs = line.split()
    t[kind].append(float(secs))
def requests(kind):
    answered = failed = 0
    for f in glob.glob(f"{out}/wrk-{kind}-*.txt"):
        text = open(f).read()
        m = re.search(r"(\d+) requests in", text)
        answered += int(m.group(1)) if m else 0
        for pat in (r"Non-2xx or 3xx responses: (\d+)", r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"):
            m = re.search(pat, text)
            failed += sum(int(g) for g in m.groups()) if m else 0
    return answered, failed
q = statistics.median(t["quiet"])
print(f"database: {size} MiB; {len(t['quiet'])} trials of each kind, medians\n")
print("| full backup | time | slowdown | status requests answered (failed) | target | met |\n|---|---|---|---|---|---|")
print(f"| server idle | {q:.2f} s | | | | |")
for kind, label, target in (("polled", "200 clients each asking /api/v1/status once a second", 10), ("flood", "200 connections asking without pause (wrk takes a core)", None)):
    m = statistics.median(t[kind])
    slow = 100 * (m / q - 1)
    answered, failed = requests(kind)
    met = "" if target is None else ("yes" if slow <= target and failed == 0 else "NO")
    goal = "" if target is None else f"<= {target}%, none failed"
    print(f"| {label} | {m:.2f} s | {slow:+.1f}% | {answered} ({failed}) | {goal} | {met} |")
print("\nraw (s): " + "; ".join(f"{k} " + ", ".join(f"{x:.2f}" for x in v) for k, v in t.items()))
PY
