#!/usr/bin/env python3
"""Builds a realistic SQLite database for the benchmark: an app's tasks table
with text and JSON columns and two secondary indexes, in WAL mode.

Rows average about 1 KiB, so a day of activity (1% of rows edited at random:
their text and JSON, not the indexed columns) changes about 4% of the 4 KiB
pages and every 1 MiB region of the file, the workload the benchmark targets
are stated for. bench.sh reports the share of pages that really changed.

usage: gen-db.py PATH SIZE_MIB
       gen-db.py PATH --change PERCENT   (update that share of rows at random, like a day of use)
"""
import json, random, sqlite3, sys

WORDS = ("customer invoice follow up meeting report deploy server backup restore "
         "incident review budget quarterly migrate database schema release notes "
         "urgent blocked waiting approved draft sent paid overdue support ticket").split()

def text(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))

def row(rng, i):
    meta = {"priority": rng.randint(1, 5), "labels": rng.sample(WORDS, 3),
            "owner": f"user{rng.randint(1, 500)}", "estimate_h": round(rng.random() * 40, 1)}
    return (f"{text(rng, 4)} #{i}", text(rng, rng.randint(80, 160)), json.dumps(meta),
            1_700_000_000 + i * 7, rng.choice(["open", "done", "waiting"]))

def create(path, size_mib):
    rng = random.Random(1)
    c = sqlite3.connect(path)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE tasks(id INTEGER PRIMARY KEY, title TEXT, body TEXT, meta TEXT, updated INTEGER, state TEXT)")
    c.execute("CREATE INDEX tasks_updated ON tasks(updated)")
    c.execute("CREATE INDEX tasks_state ON tasks(state, updated)")
    i = 0
    target = size_mib * 1024 * 1024
    while True:
        c.executemany("INSERT INTO tasks(title, body, meta, updated, state) VALUES (?,?,?,?,?)",
                      (row(rng, i + k) for k in range(20000)))
        i += 20000
        c.commit()
        pages, size = c.execute("SELECT page_count, page_size FROM pragma_page_count, pragma_page_size").fetchone()
        if pages * size >= target:
            break
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()

def change(path, percent):
    rng = random.Random()
    c = sqlite3.connect(path)
    n = c.execute("SELECT max(id) FROM tasks").fetchone()[0]
    ids = rng.sample(range(1, n + 1), int(n * percent / 100))
    c.executemany("UPDATE tasks SET body = ?, meta = json_set(meta, '$.priority', ?) WHERE id = ?",
                  ((text(rng, rng.randint(80, 160)), rng.randint(1, 5), i) for i in ids))
    c.commit()
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()

if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[2] == "--change":
        change(sys.argv[1], float(sys.argv[3]))
    elif len(sys.argv) == 3:
        create(sys.argv[1], int(sys.argv[2]))
    else:
        sys.exit(__doc__)
