#!/usr/bin/env bash
# Benchmark against S3: offsite backup and restore of a SQLite database to a
# local moto S3 server, versus the `sqlite3 .backup | zstd -3 -T0 | age`
# pipeline uploaded with `aws s3 cp` to the same server and fetched back, in
# one run on this machine.
#
# usage: scripts/bench-s3.sh [SIZE_MIB]     (default 1024; results in bench-out/s3/results.md)
#
# moto is an emulator written in Python: absolute throughput says more about
# moto than about S3. Both contenders talk to the same server in the same run,
# so the ratios are what to read.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-1024}
OUT=${BENCH_DIR:-$PWD/bench-out}/s3
rm -rf "$OUT"; mkdir -p "$OUT"
PYTHON=${PYTHON:-python3}

scripts/install-test-deps.sh
command -v aws >/dev/null || "$PYTHON" -m pip install --quiet --disable-pip-version-check awscli \
  || "$PYTHON" -m pip install --quiet --disable-pip-version-check --break-system-packages awscli
cargo build --release -q -p offsite
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/offsite

# A moto S3 server on a free port of 127.0.0.1, stopped on exit.
PORT=$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$PYTHON" -m moto.server -H 127.0.0.1 -p "$PORT" > "$OUT/moto.log" 2>&1 &
MOTO=$!
trap 'kill $MOTO 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break
  sleep 0.2
done
ENDPOINT=http://127.0.0.1:$PORT
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_DEFAULT_REGION=us-east-1
export AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_CONFIG_FILE=/dev/null
S3="aws --endpoint-url $ENDPOINT s3"
$S3 mb s3://offsite-bench >/dev/null

DB=$OUT/app.db
echo "generating a ${SIZE} MiB database..." >&2
"$PYTHON" scripts/gen-db.py "$DB" "$SIZE"
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
name = "moto"
kind = "s3"
bucket = "offsite-bench"
prefix = "offsite"
endpoint = "$ENDPOINT"
region = "us-east-1"
allow_http = true
TOML

# Wall seconds and peak RSS (KiB) of a command, appended to $OUT/times.
measure() { # name cmd...
  local name=$1; shift
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  /usr/bin/time -f "$name %e %M" -a -o "$OUT/times" "$@"
}

# 1. The pipeline: online backup to a file, compress and encrypt, upload.
measure pipe_snapshot sqlite3 "$DB" ".backup '$OUT/pipe.db'"
measure pipe_encode sh -c "zstd -3 -T0 -q -c '$OUT/pipe.db' | age -r '$REC' > '$OUT/pipe.db.zst.age'"
PIPE_BYTES=$(stat -c %s "$OUT/pipe.db.zst.age")
measure pipe_upload $S3 cp --only-show-errors "$OUT/pipe.db.zst.age" s3://offsite-bench/pipeline/pipe.db.zst.age

# 2. offsite: snapshot, chunk, compress, encrypt and upload in one run.
measure offsite_backup "$BIN" -c "$OUT/offsite.toml" backup --json > "$OUT/backup.json"
UPLOADED=$("$PYTHON" -c "import json;print(json.load(open('$OUT/backup.json'))[0]['snapshot']['uploaded_bytes'])")

# 3. Restores: download, decrypt, decompress (offsite also verifies).
measure pipe_download $S3 cp --only-show-errors s3://offsite-bench/pipeline/pipe.db.zst.age "$OUT/pipe-down.age"
measure pipe_decode sh -c "age -d -i '$OUT/key.txt' '$OUT/pipe-down.age' | zstd -d -q -o '$OUT/pipe-restored.db'"
measure offsite_restore "$BIN" -c "$OUT/offsite.toml" restore --source app --latest --to "$OUT/restored.db"
sqlite3 "$OUT/restored.db" "PRAGMA integrity_check" | grep -qx ok
sqlite3 "$OUT/pipe-restored.db" "PRAGMA integrity_check" | grep -qx ok

"$PYTHON" - "$OUT" "$DBSIZE" "$PIPE_BYTES" "$UPLOADED" <<'PY' | tee "$OUT/results.md"
import sys
out, dbsize, pipe_bytes, uploaded = sys.argv[1], *map(int, sys.argv[2:])
t = {}
for line in open(f"{out}/times"):
    name, secs, rss = line.split()
    t[name] = (float(secs), int(rss) / 1024)
mib = dbsize / 2**20
s = lambda *names: sum(t[n][0] for n in names)
pipe_up = s("pipe_snapshot", "pipe_encode", "pipe_upload")
pipe_down = s("pipe_download", "pipe_decode")
print(f"database: {mib:.0f} MiB; S3 server: moto on 127.0.0.1 (same server for both)")
print(f"uploaded: offsite {uploaded/2**20:.1f} MiB, pipeline {pipe_bytes/2**20:.1f} MiB\n")
print("| measure | offsite | sqlite3 .backup, zstd, age + aws s3 cp | offsite faster by |")
print("|---|---|---|---|")
ob, orr = t["offsite_backup"][0], t["offsite_restore"][0]
print(f"| backup (snapshot to object stored) | {ob:.1f} s, {mib/ob:.0f} MiB/s | {pipe_up:.1f} s, {mib/pipe_up:.0f} MiB/s "
      f"(upload alone {t['pipe_upload'][0]:.1f} s) | {pipe_up/ob:.2f}x |")
print(f"| restore (object to checked database) | {orr:.1f} s, {mib/orr:.0f} MiB/s | {pipe_down:.1f} s, {mib/pipe_down:.0f} MiB/s "
      f"(download alone {t['pipe_download'][0]:.1f} s) | {pipe_down/orr:.2f}x |")
print(f"| peak RSS | backup {t['offsite_backup'][1]:.0f} MiB, restore {t['offsite_restore'][1]:.0f} MiB | "
      f"aws s3 cp up {t['pipe_upload'][1]:.0f} MiB, down {t['pipe_download'][1]:.0f} MiB | |")
print("\nraw timings (s, peak RSS MiB):")
for k, (sec, m) in t.items():
    print(f"- {k}: {sec:.2f} s, {m:.0f} MiB")
PY
