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
# The format 1 rows: format 2 is what a backup makes by default.
format = 1
allow_unsigned = true
TOML
# The same source to a format 2 repository (signed, keyed chunk ids, delta
# lists), made by `offsite init` with the same identity as its owner.
cat > "$OUT/offsite2.toml" <<TOML
[encryption]
identity_file = "key.txt"
[[sources]]
name = "app"
kind = "sqlite"
path = "app.db"
[[targets]]
name = "local2"
kind = "local"
path = "repo2"
TOML
"$BIN" -c "$OUT/offsite2.toml" init > /dev/null 2>&1

# Wall seconds and peak RSS (KiB) of a command, appended to $OUT/times.
measure() { # name cmd...
  local name=$1; shift
  [ -n "${WARM:-}" ] || { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
  /usr/bin/time -f "$name %e %M" -a -o "$OUT/times" "$@"
}
field() { awk -v n="$1" '$1 == n { print $'"$2"' }' "$OUT/times"; }

# 1. The reference pipeline: online backup to a file, then zstd | age.
measure pipeline sh -c "sqlite3 '$DB' \".backup '$OUT/pipe.db'\" && zstd -3 -T0 -q -c '$OUT/pipe.db' | age -r '$REC' > '$OUT/pipe.db.zst.age'"
PIPE_BYTES=$(stat -c %s "$OUT/pipe.db.zst.age")

# 2. offsite full backup.
measure offsite_full "$BIN" -c "$OUT/offsite.toml" backup --json > "$OUT/full.json"
measure offsite2_full "$BIN" -c "$OUT/offsite2.toml" backup --json > "$OUT/full2.json"

# 3. restic on the same snapshot file (restic cannot read a live SQLite database consistently).
export RESTIC_PASSWORD=bench RESTIC_REPOSITORY=$OUT/restic
restic init -q >/dev/null
measure restic_full restic backup -q "$OUT/pipe.db"

# 4. A day of activity: 1% of rows changed at random.
python3 scripts/gen-db.py "$DB" --change 1
measure offsite_incr "$BIN" -c "$OUT/offsite.toml" backup --json > "$OUT/incr.json"
(cd "$OUT/repo2" && find . -type f | sort) > "$OUT/repo2-before"
measure offsite2_incr "$BIN" -c "$OUT/offsite2.toml" backup --json > "$OUT/incr2.json"
# What the format 2 incremental uploaded, by kind: packs (the changed pages,
# compressed) against index, list and manifest (issue 10: total within
# 1.25x of the packs alone).
(cd "$OUT/repo2" && find . -type f | sort | comm -13 "$OUT/repo2-before" - | xargs stat -c '%s %n') \
  | awk '{ split($2, p, "/"); k = p[2]; b[k] += $1 } END { for (k in b) print k, b[k] }' > "$OUT/incr2-split"
incr() { python3 -c "import json;print(json.load(open('$OUT/$1.json'))[0]$2)"; }
INCR_UP=$(incr incr "['snapshot']['uploaded_bytes']")
INCR_REQ=$(incr incr "['requests']")
INCR_NEW=$(incr incr "['snapshot']['new_bytes']")
INCR2_UP=$(incr incr2 "['snapshot']['uploaded_bytes']")
INCR2_REQ=$(incr incr2 "['requests']")
sqlite3 "$DB" ".backup '$OUT/pipe2.db'"
RESTIC_BEFORE=$(du -sb "$OUT/restic" | cut -f1)
measure restic_incr restic backup -q "$OUT/pipe2.db"
RESTIC_INCR=$(( $(du -sb "$OUT/restic" | cut -f1) - RESTIC_BEFORE ))

# 5. Restores.
measure offsite_restore "$BIN" -c "$OUT/offsite.toml" restore --source app --latest --to "$OUT/restored.db"
measure offsite2_restore "$BIN" -c "$OUT/offsite2.toml" restore --source app --latest --to "$OUT/restored2.db"
# The first restore ran integrity_check and (the owner's identity signs)
# recorded it: a second restore of the snapshot skips it (docs/cli.md,
# database check records), as every restore does after a backup with
# database_check = "backup".
measure offsite2_restore_recorded "$BIN" -c "$OUT/offsite2.toml" restore --source app --latest --to "$OUT/restored2b.db"
cmp "$OUT/restored2.db" "$OUT/restored2b.db"
# How long the check a record saves takes on this database, and quick_check,
# with the file in the page cache as a restore's check has it.
WARM=1 measure integrity_check sqlite3 "$OUT/restored2b.db" "PRAGMA integrity_check"
WARM=1 measure quick_check sqlite3 "$OUT/restored2b.db" "PRAGMA quick_check"
mkdir -p "$OUT/restic-restore"
measure restic_restore restic restore -q latest --target "$OUT/restic-restore"
measure pipeline_restore sh -c "age -d -i '$OUT/key.txt' '$OUT/pipe.db.zst.age' | zstd -d -q -o '$OUT/pipe-restored.db'"
sqlite3 "$OUT/restored.db" "PRAGMA integrity_check" | grep -qx ok
sqlite3 "$OUT/restored2.db" "PRAGMA integrity_check" | grep -qx ok
cmp "$OUT/restored.db" "$OUT/restored2.db"

python3 - "$OUT" "$DBSIZE" "$PIPE_BYTES" "$INCR_UP" "$INCR_REQ" "$RESTIC_INCR" "$INCR_NEW" "$INCR2_UP" "$INCR2_REQ" <<'PY' | tee "$OUT/results.md"
import sys
out, dbsize, pipe_bytes, incr_up, incr_req, restic_incr, incr_new, incr2_up, incr2_req = sys.argv[1], *map(int, sys.argv[2:])
t = {}
for line in open(f"{out}/times"):
    name, secs, rss = line.split()
    t[name] = (float(secs), int(rss) / 1024)
mib = dbsize / 2**20
print(f"database: {mib:.0f} MiB; pipeline output {pipe_bytes/2**20:.1f} MiB\n")
print("| measure | format | offsite vs reference (same run) | target | met |\n|---|---|---|---|---|")
for fmt, pre, up, req in (("1", "offsite", incr_up, incr_req), ("2", "offsite2", incr2_up, incr2_req)):
    def row(label, value, target, ok):
        print(f"| {label} | {fmt} | {value} | {target} | {'yes' if ok else 'NO'} |")
    full, inc, rest = t[f"{pre}_full"], t[f"{pre}_incr"], t[f"{pre}_restore"]
    r = t["pipeline"][0] / full[0]
    row("full backup throughput", f"{r:.2f}x the pipeline ({mib/full[0]:.0f} vs {mib/t['pipeline'][0]:.0f} MiB/s)", ">= 1.5x", r >= 1.5)
    p = 100 * up / dbsize
    row("upload after 1% row change", f"{p:.2f}% of the database ({up/2**20:.1f} MiB; {100*incr_new/dbsize:.1f}% of pages changed; restic: {100*restic_incr/dbsize:.1f}%)", "<= 3%", p <= 3)
    row("requests after 1% change", f"{req}", "<= 50", req <= 50)
    r = rest[0] / t["restic_restore"][0]
    row("restore time", f"{r:.2f}x restic's ({rest[0]:.1f}s vs {t['restic_restore'][0]:.1f}s; pipeline decode {t['pipeline_restore'][0]:.1f}s)", "<= 0.66x", r <= 0.66)
    mx = max(full[1], inc[1], rest[1], t.get(f"{pre}_restore_recorded", rest)[1])
    rm = max(t["restic_full"][1], t["restic_incr"][1], t["restic_restore"][1])
    if fmt == "2":
        rr = t["offsite2_restore_recorded"][0]
        r = rr / t["restic_restore"][0]
        row("restore time, check recorded", f"{r:.2f}x restic's ({rr:.1f}s; integrity_check {t['integrity_check'][0]:.1f}s, quick_check {t['quick_check'][0]:.1f}s on this database)", "<= 0.66x", r <= 0.66)
    row("peak RSS", f"{mx:.0f} MB (restic {rm:.0f} MB; backup {full[1]:.0f}, incremental {inc[1]:.0f}, restore {rest[1]:.0f})", "< restic", mx < rm)
split = dict(l.split() for l in open(f"{out}/incr2-split"))
packs = int(split.get("packs", 0)); meta = sum(int(v) for k, v in split.items() if k != "packs")
r = (packs + meta) / packs
print(f"| format 2 incremental: all uploads / packs alone | 2 | {r:.3f} (packs {packs}, index + lists + manifest {meta} bytes) | <= 1.25 | {'yes' if r <= 1.25 else 'NO'} |")
print("\nraw timings (s, peak RSS MiB):")
for k, (s, m) in t.items():
    print(f"- {k}: {s:.2f} s, {m:.0f} MiB")
PY
