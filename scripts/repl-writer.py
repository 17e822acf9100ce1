#!/usr/bin/env python3
"""The application of the replication benchmark (scripts/bench-replicate.sh):
commits small write transactions into a database made by scripts/gen-db.py
at a steady rate, and records when each one committed and how long it took.

Each transaction is what an app's request does: BEGIN IMMEDIATE, rewrite
one random task's body (80 to 160 words, as gen-db.py writes them) and its
indexed `updated` column, COMMIT. The connection is in WAL mode with a
5 s busy timeout and synchronous=NORMAL, what WAL applications are
advised to run (no fsync per commit; --synchronous FULL adds one). Transactions are started on a fixed schedule
(the i-th at start + i / RATE); one that starts late is not made up for by
a burst.

Output: one CSV line per transaction,
    start,lock_ms,commit_ms,total_ms,end
start and end are Unix times in seconds (the end is when COMMIT returned:
the transaction is in every state read after it); lock_ms is the time
BEGIN IMMEDIATE waited for the writer lock, commit_ms the time of the
COMMIT statement, total_ms the whole transaction.

usage: repl-writer.py DB --duration SECONDS --rate PER_SECOND --out CSV
                      [--synchronous NORMAL|FULL] [--seed N]
"""
import argparse, random, sqlite3, time

WORDS = ("customer invoice follow up meeting report deploy server backup restore "
         "incident review budget quarterly migrate database schema release notes "
         "urgent blocked waiting approved draft sent paid overdue support ticket").split()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("db")
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--synchronous", default="NORMAL", choices=["FULL", "NORMAL"])
    p.add_argument("--seed", type=int, default=7)
    a = p.parse_args()

    rng = random.Random(a.seed)
    c = sqlite3.connect(a.db, isolation_level=None, timeout=5.0)
    if c.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        raise SystemExit(f"{a.db} is not in WAL mode")
    c.execute(f"PRAGMA synchronous={a.synchronous}")
    n = c.execute("SELECT max(id) FROM tasks").fetchone()[0]
    # Texts are made before the run, so the loop measures SQLite, not Python.
    count = int(a.duration * a.rate)
    work = [(" ".join(rng.choice(WORDS) for _ in range(rng.randint(80, 160))), rng.randint(1, n))
            for _ in range(count)]
    rows = []
    t0 = time.time() + 0.05
    for i, (body, rid) in enumerate(work):
        due = t0 + i / a.rate
        wait = due - time.time()
        if wait > 0:
            time.sleep(wait)
        start = time.time()
        c.execute("BEGIN IMMEDIATE")
        locked = time.time()
        c.execute("UPDATE tasks SET body = ?, updated = ? WHERE id = ?", (body, int(start), rid))
        commit = time.time()
        c.execute("COMMIT")
        end = time.time()
        rows.append(f"{start:.6f},{(locked - start) * 1e3:.3f},{(end - commit) * 1e3:.3f},"
                    f"{(end - start) * 1e3:.3f},{end:.6f}\n")
    c.close()
    with open(a.out, "w") as f:
        f.writelines(rows)


if __name__ == "__main__":
    main()
