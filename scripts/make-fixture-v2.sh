#!/usr/bin/env bash
# How tests/fixtures/repo-v2 was made (once, by the first offsite that wrote
# format 2). Never run it to "update" the fixture: the fixture is what an old
# offsite wrote, and a_repository_written_by_format_v2_still_restores proves
# the current code still reads it. Run it into a scratch directory to see
# the steps work; a new format version gets a new fixture.
#
# usage: scripts/make-fixture-v2.sh OUT_DIR   (needs the offsite binary built)
#
# The repository holds: two key generations (a third recipient added, then
# removed with `key remove`), an authorised writer (`writer.key`) that made
# both snapshots of each source, a full list and a delta from it, v2 packs
# with their signed trailers, index files, and a pin (`backup --pin`).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$1
BIN=${OFFSITE_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/debug/offsite}
rm -rf "$OUT"; mkdir -p "$OUT"; cd "$OUT"
export STATE_DIRECTORY=$OUT/state

"$BIN" keygen -o key.txt > /dev/null
"$BIN" keygen -o key2.txt > recipient2.txt
"$BIN" keygen -o removed.txt > recipient3.txt
"$BIN" writer keygen -o writer.key > writer.txt

sources='[[sources]]
name = "app"
kind = "sqlite"
path = "app.db"
[[sources]]
name = "files"
kind = "files"
path = "files"
[[targets]]
name = "fixture"
kind = "local"
path = "repo"'
printf '[encryption]\nidentity_file = "key.txt"\n%s\n' "$sources" > owner.toml
"$BIN" -c owner.toml init > init.txt
OWNER=$(grep -o 'offsite-owner1[0-9a-z]*' init.txt | head -n 1)
echo "$OWNER" > owner-key.txt
"$BIN" -c owner.toml key add "$(cat recipient2.txt)" --name colleague
"$BIN" -c owner.toml key add "$(cat recipient3.txt)" --name leaver
"$BIN" -c owner.toml writer add app-1 "$(cat writer.txt)"
printf '[encryption]\nwriter_key_file = "writer.key"\nowner_key = "%s"\n%s\n' "$OWNER" "$sources" > host.toml

python3 - <<'PY'
import sqlite3
c = sqlite3.connect("app.db")
c.executescript("PRAGMA journal_mode=WAL; CREATE TABLE tasks(id INTEGER PRIMARY KEY, title TEXT, body TEXT);")
c.executemany("INSERT INTO tasks(title, body) VALUES (?, ?)",
              [(f"task {i}", f"body {i} " * 20) for i in range(2000)])
c.commit()
PY
mkdir -p files/docs
printf 'first version\n' > files/docs/note.txt
printf 'unchanged\n' > files/keep.txt
ln -s docs/note.txt files/link
"$BIN" -c host.toml backup --pin

sleep 1.1
"$BIN" -c owner.toml key remove "$(cat recipient3.txt)"

python3 - <<'PY'
import sqlite3
c = sqlite3.connect("app.db")
c.execute("UPDATE tasks SET body = body || ' changed' WHERE id % 50 = 0")
c.executemany("INSERT INTO tasks(title, body) VALUES (?, ?)",
              [(f"late task {i}", "late " * 30) for i in range(100)])
c.commit()
PY
printf 'second version\n' > files/docs/note.txt
"$BIN" -c host.toml backup

python3 - > expected.txt <<'PY'
import sqlite3
c = sqlite3.connect("app.db")
n, s = c.execute("SELECT count(*), sum(length(body)) FROM tasks").fetchone()
print(n, s)
PY
rm -rf state files app.db app.db-wal app.db-shm recipient3.txt init.txt
echo "fixture written to $OUT" >&2
