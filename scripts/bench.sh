#!/usr/bin/env bash
# Benchmark: offsite against the `sqlite3 .backup | zstd -3 -T0 | age` pipeline
# and restic, in one run on this machine, on a realistic SQLite database.
#
# usage: scripts/bench.sh [SIZE_MIB]      (default 1024; results in bench-out/results.md)
#
# Reports ratios (offsite vs the others measured in the same run): full-backup
# throughput, bytes and requests uploaded after a 1% random row change,
# restore time, and peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-1024}
OUT=${BENCH_DIR:-$PWD/bench-out}
rm -rf "$OUT"; mkdir -p "$OUT"

scripts/install-test-deps.sh
command -v restic >/dev/null || { apt-get update -qq >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq restic >/dev/null; }
cargo build --release -q -p offsite
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/offsite

DB=$OUT/app.db
echo "generating a ${SIZE} MiB database..." >&2
python3 scripts/gen-db.py "$DB" "$SIZE"
DBSIZE=$(stat -c %s "$DB")

"$BIN" keygen -o "$OUT/key.txt" > "$OUT/recipient.txt" 2>/dev/null
REC=$(cat "$OUT/recipient.txt")
cat > "$OUT/offsite.toml" <<TOML
[encryption]
recipients = ["$REC"]
identity_file = "key.txt"
[[sources]]
name = "app"
kind = "sqlite"
path = "app.db"
[[targets]]
name = "local"
kind = "local"
path = "repo"
TOML

# Wall seconds and peak RSS (KiB) of a command, appended to $OUT/times.
measure() { # name cmd...
  local name=$1; shift
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  /usr/bin/time -f "$name %e %M" -a -o "$OUT/times" "$@"
}
field() { awk -v n="$1" '$1 == n { print $'"$2"' }' "$OUT/times"; }

# 1. The reference pipeline: online backup to a file, then zstd | age.
measure pipeline sh -c "sqlite3 '$DB' \".backup '$OUT/pipe.db'\" && zstd -3 -T0 -q -c '$OUT/pipe.db' | age -r '$REC' > '$OUT/pipe.db.zst.age'"
PIPE_BYTES=$(stat -c %s "$OUT/pipe.db.zst.age")

# 2. offsite full backup.
measure offsite_full "$BIN" -c "$OUT/offsite.toml" backup --json > "$OUT/full.json"

# 3. restic on the same snapshot file (restic cannot read a live SQLite database consistently).
export RESTIC_PASSWORD=bench RESTIC_REPOSITORY=$OUT/restic
restic init -q >/dev/null
measure restic_full restic backup -q "$OUT/pipe.db"

# 4. A day of activity: 1% of rows changed at random.
python3 scripts/gen-db.py "$DB" --change 1
measure offsite_incr "$BIN" -c "$OUT/offsite.toml" backup --json > "$OUT/incr.json"
INCR_UP=$(python3 -c "import json;print(json.load(open('$OUT/incr.json'))[0]['snapshot']['uploaded_bytes'])")
INCR_REQ=$(python3 -c "import json;print(json.load(open('$OUT/incr.json'))[0]['requests'])")
INCR_NEW=$(python3 -c "import json;print(json.load(open('$OUT/incr.json'))[0]['snapshot']['new_bytes'])")
sqlite3 "$DB" ".backup '$OUT/pipe2.db'"
RESTIC_BEFORE=$(du -sb "$OUT/restic" | cut -f1)
measure restic_incr restic backup -q "$OUT/pipe2.db"
RESTIC_INCR=$(( $(du -sb "$OUT/restic" | cut -f1) - RESTIC_BEFORE ))

# 5. Restores.
measure offsite_restore "$BIN" -c "$OUT/offsite.toml" restore --source app --latest --to "$OUT/restored.db"
mkdir -p "$OUT/restic-restore"
measure restic_restore restic restore -q latest --target "$OUT/restic-restore"
measure pipeline_restore sh -c "age -d -i '$OUT/key.txt' '$OUT/pipe.db.zst.age' | zstd -d -q -o '$OUT/pipe-restored.db'"
sqlite3 "$OUT/restored.db" "PRAGMA integrity_check" | grep -qx ok

python3 - "$OUT" "$DBSIZE" "$PIPE_BYTES" "$INCR_UP" "$INCR_REQ" "$RESTIC_INCR" "$INCR_NEW" <<'PY' | tee "$OUT/results.md"
import sys
out, dbsize, pipe_bytes, incr_up, incr_req, restic_incr, incr_new = sys.argv[1], *map(int, sys.argv[2:])
t = {}
for line in open(f"{out}/times"):
    name, secs, rss = line.split()
    t[name] = (float(secs), int(rss) / 1024)
mib = dbsize / 2**20
def row(label, value, target, ok):
    print(f"| {label} | {value} | {target} | {'yes' if ok else 'NO'} |")
print(f"database: {mib:.0f} MiB; pipeline output {pipe_bytes/2**20:.1f} MiB\n")
print("| measure | offsite vs reference (same run) | target | met |\n|---|---|---|---|")
r = t["pipeline"][0] / t["offsite_full"][0]
row("full backup throughput", f"{r:.2f}x the pipeline ({mib/t['offsite_full'][0]:.0f} vs {mib/t['pipeline'][0]:.0f} MiB/s)", ">= 1.5x", r >= 1.5)
p = 100 * incr_up / dbsize
row("upload after 1% row change", f"{p:.2f}% of the database ({incr_up/2**20:.1f} MiB; {100*incr_new/dbsize:.1f}% of pages changed; restic: {100*restic_incr/dbsize:.1f}%)", "<= 3%", p <= 3)
row("requests after 1% change", f"{incr_req}", "<= 50", incr_req <= 50)
r = t["restic_restore"][0] / t["offsite_restore"][0]
row("restore time", f"{r:.2f}x faster than restic restore ({t['offsite_restore'][0]:.1f}s vs {t['restic_restore'][0]:.1f}s; pipeline decode {t['pipeline_restore'][0]:.1f}s)", ">= 1.5x", r >= 1.5)
mx = max(t["offsite_full"][1], t["offsite_incr"][1], t["offsite_restore"][1])
rm = max(t["restic_full"][1], t["restic_incr"][1], t["restic_restore"][1])
row("peak RSS", f"{mx:.0f} MB (restic {rm:.0f} MB; backup {t['offsite_full'][1]:.0f}, incremental {t['offsite_incr'][1]:.0f}, restore {t['offsite_restore'][1]:.0f})", "< restic", mx < rm)
print("\nraw timings (s, peak RSS MiB):")
for k, (s, m) in t.items():
    print(f"- {k}: {s:.2f} s, {m:.0f} MiB")
PY
