#!/usr/bin/env bash
# Benchmark of continuous replication (`offsite replicate`, issue 11) to a
# local target, in one run on this machine, on a realistic SQLite database
# (scripts/gen-db.py) that an application (scripts/repl-writer.py) writes
# RATE small transactions a second into.
#
# usage: SIZE=1024 DURATION=60 RATE=100 IDLE=30 ROUNDS=3 SYNC=NORMAL scripts/bench-replicate.sh
#        (these are the defaults; results in bench-out/replicate/results.md)
#
# Steps, all with the release build:
# 1. the writer alone for DURATION seconds (its commit latency without replication);
# 2. `offsite replicate` started; once its base snapshot is stored, the same
#    writer for DURATION seconds, then 3 s for the last step to land, then
#    SIGTERM. Measured: commit-to-stored latency (RPO), the replicator's CPU
#    (/proc/PID/stat) and peak RSS (VmHWM), objects and bytes stored, the
#    writer's commit latency beside it;
# 3. `offsite restore --latest` of the replicated state (base + replica objects),
#    and `--at` a second three quarters into the writer's run;
# 4. `offsite replicate` again on the unchanged database: its base, then IDLE
#    seconds with no writer (CPU, objects stored);
# 5. a plain `offsite backup` of the same state, then ROUNDS alternating
#    restores of it (--snapshot, --database-check) and of the replicated
#    state (--at its last replicated second), page cache dropped before each
#    when run as root;
# 6. one `sqlite3 .backup | zstd -3 -T0 | age` of the database (its CPU, for
#    the cost of a snapshot every minute);
# 7. restic as it would be run once a minute (restic cannot read a live SQLite
#    database consistently, so a `sqlite3 .backup` copy first): its first
#    backup, then, after DURATION seconds of the same writer, the next one (the
#    cost of a minute), then ROUNDS restores of it, page cache dropped.
#
# A commit counts as stored when a replica object whose instant (its key's
# `at`, UTC, ms) is at or after the moment COMMIT returned exists on the
# target: the local backend writes an object to a temporary file, fsyncs it
# and hard-links it into place, so the file's mtime is its last write and its
# ctime the link (the moment the name exists). Both are reported.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${SIZE:-1024}
DURATION=${DURATION:-60}
RATE=${RATE:-100}
IDLE=${IDLE:-30}
ROUNDS=${ROUNDS:-3}
SYNC=${SYNC:-NORMAL}   # the writer's PRAGMA synchronous (NORMAL or FULL)
OUT=${BENCH_DIR:-$PWD/bench-out}/replicate
rm -rf "$OUT"; mkdir -p "$OUT"

command -v restic >/dev/null || { apt-get update -qq >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq restic >/dev/null; }
for tool in sqlite3 zstd age restic python3 /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "bench-replicate: $tool is needed (scripts/install-test-deps.sh installs it)" >&2; exit 1; }
done
cargo build --release -q -p offsite
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/offsite
TCK=$(getconf CLK_TCK)

DB=$OUT/app.db
echo "generating a ${SIZE} MiB database..." >&2
python3 scripts/gen-db.py "$DB" "$SIZE"
DBSIZE=$(stat -c %s "$DB")

"$BIN" keygen -o "$OUT/key.txt" > "$OUT/recipient.txt" 2>/dev/null
REC=$(cat "$OUT/recipient.txt")
# A format 2 repository made by `offsite init`, the identity its owner (so
# the replicator can sign); the state directory holds the merge spools and
# the status file.
cat > "$OUT/offsite.toml" <<TOML
state_dir = "state"
[encryption]
identity_file = "key.txt"
[replicate]
sync_interval = "1s"
base_every = "1h"
[[sources]]
name = "app"
kind = "sqlite"
path = "app.db"
[[targets]]
name = "local"
kind = "local"
path = "repo"
TOML
CFG=$OUT/offsite.toml
"$BIN" -c "$CFG" init > /dev/null 2>&1
STATUS=$OUT/state/replicate-app.json

facts() { echo "$1 $2" >> "$OUT/facts"; }
now() { date +%s.%N; }
minus() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f\n", a - b }'; }
cpu() { awk -v t="$TCK" '{ printf "%.2f\n", ($14 + $15) / t }' "/proc/$1/stat"; }
hwm() { awk '$1 == "VmHWM:" { print $2 }' "/proc/$1/status"; }
# Every file of the repository: ctime mtime size path.
listing() { (cd "$OUT/repo" && find . -path ./.tmp -prune -o -type f -printf '%C@ %T@ %s %P\n' | sort -k4) > "$1"; }
status_field() { python3 -c "import json,sys; s=json.load(open('$STATUS')); print(eval(sys.argv[1]))" "$1"; }
# Waits (up to 10 min) until the replicator has stored a base.
wait_base() { # pid
  for _ in $(seq 3000); do
    kill -0 "$1" 2>/dev/null || { echo "bench-replicate: the replicator exited (see $OUT/replicate*.log)" >&2; exit 1; }
    if [ -f "$STATUS" ] && [ "$(status_field "s['base'] is not None and s['targets'][0]['replicated_at'] is not None")" = True ]; then
      return
    fi
    sleep 0.2
  done
  echo "bench-replicate: no base snapshot after 10 minutes" >&2; exit 1
}
stop_replicator() { # pid
  kill -TERM "$1"
  wait "$1" || { echo "bench-replicate: the replicator failed (see $OUT/replicate*.log)" >&2; exit 1; }
}
REPL=""
trap '[ -z "$REPL" ] || kill -TERM "$REPL" 2>/dev/null || true' EXIT

# 1. The writer alone.
echo "writer alone, ${DURATION} s..." >&2
python3 scripts/repl-writer.py "$DB" --duration "$DURATION" --rate "$RATE" --synchronous "$SYNC" --out "$OUT/writer-alone.csv"

# 2. The writer beside the replicator.
listing "$OUT/ls-init"
echo "replicating, ${DURATION} s of writes..." >&2
T=$(now); "$BIN" -c "$CFG" replicate --source app > "$OUT/replicate.log" 2>&1 &
REPL=$!
wait_base "$REPL"
facts base_seconds "$(minus "$(now)" "$T")"
listing "$OUT/ls-base"
facts base_cpu "$(cpu "$REPL")"
W0=$(now); C0=$(cpu "$REPL")
python3 scripts/repl-writer.py "$DB" --duration "$DURATION" --rate "$RATE" --synchronous "$SYNC" --out "$OUT/writer-repl.csv" --seed 8
W1=$(now); C1=$(cpu "$REPL")
sleep 3
cp "$STATUS" "$OUT/status-run.json"
facts repl_hwm_kib "$(hwm "$REPL")"
S0=$(now)
stop_replicator "$REPL"; REPL=""
listing "$OUT/ls-run"
facts writer_start "$W0"; facts writer_end "$W1"; facts stop "$S0"
facts cpu_writer "$(minus "$C1" "$C0")"
LAST_AT=$(python3 - "$OUT/ls-run" <<'PY'
import sys, datetime
ats = [l.split()[3].rsplit("-", 1)[1] for l in open(sys.argv[1]) if l.split()[3].startswith("replica/")]
at = max(datetime.datetime.strptime(a, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=datetime.timezone.utc) for a in ats)
# restore --at takes local time; a second means its end.
print(at.astimezone().strftime("%Y-%m-%d %H:%M:%S"))
PY
)

# Wall seconds and peak RSS (KiB) of a command, appended to $OUT/times.
measure() { # name cmd...
  local name=$1; shift
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  /usr/bin/time -f "$name %e %M %U %S" -a -o "$OUT/times" "$@"
}

# 3. Restore of the replicated state (what --latest means right after it).
echo "restoring..." >&2
measure restore_replicated "$BIN" -c "$CFG" restore --source app --latest --to "$OUT/restored-repl.db" --json > "$OUT/restore-latest.json"

# And of a second inside the run, away from its end (the stop publishes the
# whole run as merged objects): what a restore reads in the middle of an hour.
MID_AT=$(python3 -c "import datetime; print(datetime.datetime.fromtimestamp($W0 + 0.75 * ($W1 - $W0)).strftime('%Y-%m-%d %H:%M:%S'))")
measure restore_mid "$BIN" -c "$CFG" restore --source app --at "$MID_AT" --to "$OUT/restored-mid.db" --json > "$OUT/restore-mid.json"
rm -f "$OUT/restored-mid.db"

# 4. Idle: a new run on the unchanged database.
echo "replicating an idle database, ${IDLE} s..." >&2
rm -f "$STATUS"
"$BIN" -c "$CFG" replicate --source app > "$OUT/replicate-idle.log" 2>&1 &
REPL=$!
wait_base "$REPL"
sleep 1
listing "$OUT/ls-idle0"; cp "$STATUS" "$OUT/status-idle0.json"
I0=$(now); IC0=$(cpu "$REPL")
sleep "$IDLE"
I1=$(now); IC1=$(cpu "$REPL")
listing "$OUT/ls-idle1"; cp "$STATUS" "$OUT/status-idle1.json"
stop_replicator "$REPL"; REPL=""
facts idle_seconds "$(minus "$I1" "$I0")"; facts idle_cpu "$(minus "$IC1" "$IC0")"

# 5. A plain snapshot of the same state, and restores of both in turn.
"$BIN" -c "$CFG" backup --source app --json > "$OUT/backup.json"
SNAP=$(python3 -c "import json; print(json.load(open('$OUT/backup.json'))[0]['snapshot']['id'])")
for r in $(seq "$ROUNDS"); do
  measure restore_snapshot "$BIN" -c "$CFG" restore --source app --snapshot "$SNAP" --database-check --to "$OUT/restored-snap.db" --json > "$OUT/restore-snap-$r.json"
  [ "$r" = 1 ] && mv "$OUT/restored-snap.db" "$OUT/restored-snap-1.db" || rm -f "$OUT/restored-snap.db"
  measure restore_replicated "$BIN" -c "$CFG" restore --source app --at "$LAST_AT" --to "$OUT/restored-at.db" --json > "$OUT/restore-at-$r.json"
  [ "$r" = 1 ] && mv "$OUT/restored-at.db" "$OUT/restored-at-1.db" || rm -f "$OUT/restored-at.db"
done
# The replicated state is the database as the writer left it: the same pages
# as the plain snapshot of it.
cmp "$OUT/restored-repl.db" "$OUT/restored-snap-1.db"
cmp "$OUT/restored-repl.db" "$OUT/restored-at-1.db"
sqlite3 "$OUT/restored-repl.db" "PRAGMA integrity_check" | grep -qx ok
rm -f "$OUT"/restored-*.db

# 6. The pipeline, once: its CPU for one snapshot of this database.
measure pipeline sh -c "sqlite3 '$DB' \".backup '$OUT/pipe.db'\" && zstd -3 -T0 -q -c '$OUT/pipe.db' | age -r '$REC' > '$OUT/pipe.db.zst.age'"
facts pipe_bytes "$(stat -c %s "$OUT/pipe.db.zst.age")"
rm -f "$OUT/pipe.db"

# 7. restic, a snapshot a minute.
echo "restic: a first backup, ${DURATION} s of writes, the next backup, restores..." >&2
export RESTIC_PASSWORD=bench RESTIC_REPOSITORY=$OUT/restic RESTIC_CACHE_DIR=$OUT/restic-cache
restic init -q > /dev/null
RDB=$OUT/restic-copy.db
restic_bytes() { du -sb "$OUT/restic" | cut -f1; }
restic_packs() { find "$OUT/restic/data" -type f | wc -l; }
measure restic_first sh -c "sqlite3 '$DB' \".backup '$RDB'\" && restic backup -q '$RDB'"
facts restic_first_bytes "$(restic_bytes)"
RB0=$(restic_bytes); RP0=$(restic_packs)
python3 scripts/repl-writer.py "$DB" --duration "$DURATION" --rate "$RATE" --synchronous "$SYNC" --out "$OUT/writer-restic.csv" --seed 9
measure restic_next sh -c "sqlite3 '$DB' \".backup '$RDB'\" && restic backup -q '$RDB'"
facts restic_next_bytes "$(( $(restic_bytes) - RB0 ))"
facts restic_next_packs "$(( $(restic_packs) - RP0 ))"
for r in $(seq "$ROUNDS"); do
  rm -rf "$OUT/restic-restore"
  measure restic_restore restic restore latest -q --target "$OUT/restic-restore"
done
cmp "$RDB" "$OUT/restic-restore$RDB"
rm -rf "$OUT/restic-restore" "$RDB"

python3 - "$OUT" "$DBSIZE" "$DURATION" "$RATE" "$(nproc)" "$SYNC" <<'PY' | tee "$OUT/results.md"
import bisect, datetime, json, statistics, sys
out, dbsize, duration, rate, cores = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
sync = sys.argv[6]
f = {k: float(v) for k, v in (l.split() for l in open(f"{out}/facts"))}
times = {}
for line in open(f"{out}/times"):
    name, secs, rss, user, sys_ = line.split()
    times.setdefault(name, []).append((float(secs), int(rss) / 1024, float(user) + float(sys_)))

def files(name):
    rows = {}
    for l in open(f"{out}/{name}"):
        ctime, mtime, size, path = l.split(maxsplit=3)
        rows[path.strip()] = (float(ctime), float(mtime), int(size))
    return rows

def writer(name):
    return [tuple(map(float, l.split(","))) for l in open(f"{out}/{name}")]

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

def at_of(path):
    a = path.rsplit("-", 1)[1]
    return datetime.datetime.strptime(a, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=datetime.timezone.utc).timestamp()

init, base, run = files("ls-init"), files("ls-base"), files("ls-run")
base_objs = {p: v for p, v in base.items() if p not in init}
replica = {p: v for p, v in run.items() if p.startswith("replica/")}
other_new = [p for p in run if p not in base and not p.startswith("replica/")]

# RPO: the first time an object with at >= the commit's end was stored.
objs = sorted((at_of(p), v[0], v[1]) for p, v in replica.items())
ats = [o[0] for o in objs]
suffix = [(float("inf"), float("inf"))] * (len(objs) + 1)
for i in range(len(objs) - 1, -1, -1):
    suffix[i] = (min(objs[i][1], suffix[i + 1][0]), min(objs[i][2], suffix[i + 1][1]))
repl = writer("writer-repl.csv")
alone = writer("writer-alone.csv")
by_ctime, by_mtime, unstored = [], [], 0
for row in repl:
    end = row[4]
    i = bisect.bisect_left(ats, end)
    if i == len(objs):
        unstored += 1
        continue
    by_ctime.append((suffix[i][0] - end) * 1e3)
    by_mtime.append((suffix[i][1] - end) * 1e3)

# Objects and bytes while the writer ran (ctime in its window).
w0, w1, stop = f["writer_start"], f["writer_end"], f["stop"]
window = w1 - w0
levels = {}
for p, (ctime, _, size) in replica.items():
    lvl = p.split("/")[2]
    n, b, nw, bw = levels.get(lvl, (0, 0, 0, 0))
    inside = w0 <= ctime < w1
    levels[lvl] = (n + 1, b + size, nw + inside, bw + size * inside)
at_stop = sum(1 for v in replica.values() if v[0] >= stop)
obj_w = sum(v[2] for v in levels.values())
bytes_w = sum(v[3] for v in levels.values())
status = json.load(open(f"{out}/status-run.json"))["targets"][0]

cpu_w = f["cpu_writer"] / window
idle0, idle1 = files("ls-idle0"), files("ls-idle1")
idle_new = [p for p in idle1 if p not in idle0]
st0 = json.load(open(f"{out}/status-idle0.json"))["targets"][0]
st1 = json.load(open(f"{out}/status-idle1.json"))["targets"][0]
idle_cpu = f["idle_cpu"] / f["idle_seconds"]
ls_run = run
idle_base = [p for p in idle0 if p not in ls_run]

rl = json.load(open(f"{out}/restore-latest.json"))["replicated"]
ra = [json.load(open(f"{out}/restore-at-1.json"))["replicated"]]
rr = [t[0] for t in times["restore_replicated"]]
rs = [t[0] for t in times["restore_snapshot"]]
ratio = statistics.median(rr) / statistics.median(rs)
pipe = times["pipeline"][0]

mib = dbsize / 2**20
ok = lambda c: "yes" if c else "NO"
print(f"database: {mib:.0f} MiB; writer: {rate:.0f} transactions/s for {duration:.0f} s "
      f"({len(repl)} committed beside the replicator, {len(alone)} alone), synchronous={sync}; sync_interval 1s; "
      f"{cores} cores\n")
print("| measure | result | target | met |\n|---|---|---|---|")
print(f"| commit to stored (RPO), p50 / p99 / max | {pct(by_ctime, 50):.0f} / {pct(by_ctime, 99):.0f} / "
      f"{max(by_ctime):.0f} ms (name linked; by the file's mtime {pct(by_mtime, 50):.0f} / {pct(by_mtime, 99):.0f} / "
      f"{max(by_mtime):.0f} ms); {unstored} commit(s) after the last stored step | (sync_interval 1 s) | |")
print(f"| replicator CPU while writing | {100 * cpu_w:.1f}% of one core ({f['cpu_writer']:.2f} s user+sys in {window:.1f} s) | "
      f"< 10% | {ok(cpu_w < 0.10)} |")
print(f"| replicator CPU, idle database | {100 * idle_cpu:.2f}% of one core ({f['idle_cpu']:.2f} s in {f['idle_seconds']:.0f} s) | ~0 | "
      f"{ok(idle_cpu < 0.005)} |")
print(f"| objects stored, idle database, after the base | {len(idle_new)} (status requests {st0['requests']} -> {st1['requests']}) | 0 | "
      f"{ok(not idle_new)} |")
a_lock, r_lock = max(r[1] for r in alone), max(r[1] for r in repl)
a_tot, r_tot = [r[3] for r in alone], [r[3] for r in repl]
r_l = [r[1] for r in repl]
print(f"| writer blocked (BEGIN IMMEDIATE waiting for the lock), max (p99) | beside the replicator {r_lock:.1f} ms "
      f"({pct(r_l, 99):.1f}); alone {a_lock:.1f} ms | never > ~50 ms | {ok(r_lock <= 50)} |")
print(f"| writer transaction time, max (p99) | beside the replicator {max(r_tot):.1f} ms ({pct(r_tot, 99):.1f}); "
      f"alone {max(a_tot):.1f} ms ({pct(a_tot, 99):.1f}) | | |")
print(f"| restore, base + replica objects vs one snapshot (median of {len(rr)} / {len(rs)}) | {ratio:.2f}x "
      f"({statistics.median(rr):.2f} s vs {statistics.median(rs):.2f} s); replicated restore read "
      f"{rl['objects']} object(s) for {rl['steps']} step(s) | <= 1.5x | {ok(ratio <= 1.5)} |")
hwm = f["repl_hwm_kib"] / 1024
print(f"| replicator peak RSS (VmHWM, base included) | {hwm:.0f} MiB | | |")

print("\nwriter beside the replicator / alone (ms):\n")
print("| | lock wait max | lock wait p99 | COMMIT max | COMMIT p99 | COMMIT p50 | transaction max | transaction p99 |\n|---|---|---|---|---|---|---|---|")
for label, w in (("beside the replicator", repl), ("alone", alone)):
    lock, com, tot = [r[1] for r in w], [r[2] for r in w], [r[3] for r in w]
    print(f"| {label} | {max(lock):.1f} | {pct(lock, 99):.1f} | {max(com):.1f} | {pct(com, 99):.1f} | "
          f"{pct(com, 50):.1f} | {max(tot):.1f} | {pct(tot, 99):.1f} |")
slow = lambda w: sum(1 for r in w if r[3] > 50)
print(f"\ntransactions over 50 ms: {slow(repl)} beside the replicator, {slow(alone)} alone")

print("\nobjects stored:\n")
print(f"- base snapshot: {len(base_objs)} objects, {sum(v[2] for v in base_objs.values())/2**20:.1f} MiB "
      f"in {f['base_seconds']:.1f} s (replicator CPU {f['base_cpu']:.1f} s); a later base of the changed "
      f"database (the idle run's): {len(idle_base)} objects, {sum(idle0[p][2] for p in idle_base)/2**20:.2f} MiB")
for lvl in sorted(levels):
    n, b, nw, bw = levels[lvl]
    print(f"- level {lvl}: {n} objects, {b/2**20:.2f} MiB in all; {nw} ({bw/2**20:.2f} MiB) while the writer ran")
lag0 = [(v[0] - at_of(p)) * 1e3 for p, v in replica.items() if p.split("/")[2] == "0" and v[0] < stop]
print(f"- level 0 objects, stored (linked) after their instant: p50 {pct(lag0, 50):.0f} ms, p99 {pct(lag0, 99):.0f} ms, "
      f"max {max(lag0):.0f} ms")
print(f"- {at_stop} object(s) at the stop (the merge windows being closed); other new files: {len(other_new)}")
per_h = 3600 / window
print(f"- per hour at this rate (objects stored while the writer ran x {per_h:.0f}, plus one base): "
      f"{obj_w * per_h + len(base_objs):.0f} objects (replica {obj_w * per_h:.0f}), "
      f"{bytes_w * per_h / 2**20:.0f} MiB of replica objects plus a base (the first: "
      f"{sum(v[2] for v in base_objs.values())/2**20:.0f} MiB; later ones upload only changed chunks); "
      f"level 2 objects come once per 5 min, so a {window:.0f} s window counts them to within one")
print(f"- status file at the end: uploaded_bytes {status['uploaded_bytes']} "
      f"({status['uploaded_bytes']/2**20:.2f} MiB), requests {status['requests']}")
print(f"- restore --latest: {rl}; restore --at its second: {ra[0]}")
rm_ = json.load(open(f"{out}/restore-mid.json"))["replicated"]
print(f"- restore --at a second three quarters into the writer's run: {rm_['objects']} object(s) for "
      f"{rm_['steps']} step(s) in {times['restore_mid'][0][0]:.2f} s, peak RSS {times['restore_mid'][0][1]:.0f} MiB "
      f"(median replicated restore {statistics.median(rr):.2f} s; peak RSS: replicated "
      f"{max(t[1] for t in times['restore_replicated']):.0f} MiB, snapshot {max(t[1] for t in times['restore_snapshot']):.0f} MiB)")

pc = pipe[2]
print(f"\nsqlite3 .backup | zstd -3 -T0 | age, once: {pipe[0]:.1f} s, CPU {pc:.1f} s, "
      f"{f['pipe_bytes']/2**20:.0f} MiB; one a minute: {pc:.1f} CPU-minutes per hour "
      f"({100 * pc / 60:.0f}% of one core), {f['pipe_bytes'] * 60 / 2**30:.1f} GiB and 60 objects per hour, "
      f"RPO up to a minute. The replicator: {cpu_w * 60:.1f} CPU-minutes per hour ({100 * cpu_w:.1f}% of one core) "
      f"at {rate:.0f} commits/s.")
rf, rn = times["restic_first"][0], times["restic_next"][0]
rrs = statistics.median(t[0] for t in times["restic_restore"])
print(f"\nrestic (a `sqlite3 .backup` copy, then `restic backup` of it), same run: the first {rf[0]:.1f} s, "
      f"CPU {rf[2]:.1f} s, {f['restic_first_bytes']/2**20:.0f} MiB; the next after {duration:.0f} s of the writer "
      f"{rn[0]:.1f} s, CPU {rn[2]:.1f} s, {f['restic_next_bytes']/2**20:.1f} MiB in {f['restic_next_packs']:.0f} pack(s). "
      f"One a minute: {100 * rn[2] / 60:.0f}% of one core ({rn[2] / (cpu_w * 60):.1f}x the replicator's), "
      f"{f['restic_next_bytes'] * 60 / 2**20:.0f} MiB and about {f['restic_next_packs'] * 60:.0f} packs an hour "
      f"(plus index and snapshot files), RPO up to a minute. Restore (median of {len(times['restic_restore'])}, "
      f"no integrity check): {rrs:.2f} s, peak RSS {max(t[1] for t in times['restic_restore']):.0f} MiB; "
      f"offsite's replicated restore {statistics.median(rr):.2f} s = {statistics.median(rr) / rrs:.2f}x restic's, "
      f"its snapshot restore {statistics.median(rs):.2f} s = {statistics.median(rs) / rrs:.2f}x.")
print("\nraw timings (s, peak RSS MiB, CPU s):")
for k, v in times.items():
    for s, m, c in v:
        print(f"- {k}: {s:.2f} s, {m:.0f} MiB, {c:.2f} s CPU")
PY
