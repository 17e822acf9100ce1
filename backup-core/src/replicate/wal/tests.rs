//! The follower against a real SQLite under a concurrent writer: the image
//! built from a base and the steps must equal the database, whatever
//! checkpoints the writer runs meanwhile.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::*;

fn pages_of(conn: &Connection) -> Vec<u8> {
    let mut stmt = conn
        .prepare("SELECT data FROM sqlite_dbpage ORDER BY pgno")
        .unwrap();
    let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0)).unwrap();
    rows.flat_map(|r| r.unwrap()).collect()
}

fn current(path: &Path) -> Vec<u8> {
    let conn = crate::source::sqlite::open_read_only(path).unwrap();
    conn.execute_batch("BEGIN").unwrap();
    let pages = pages_of(&conn);
    conn.execute_batch("COMMIT").unwrap();
    pages
}

fn apply(image: &mut Vec<u8>, change: &Change) {
    let size = change.page_size as usize;
    image.resize(change.size_pages as usize * size, 0);
    for (pgno, data) in &change.pages {
        let at = (*pgno as usize - 1) * size;
        image[at..at + size].copy_from_slice(data);
    }
}

fn new_db(dir: &Path) -> (PathBuf, Connection) {
    let path = dir.join("app.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200)
         INSERT INTO t(v) SELECT randomblob(300) FROM n;",
    )
    .unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    (path, conn)
}

/// Follows `follower` into `image` once, as the replicator does: the
/// upkeep's changes are `held` and go out with the next boundary's step.
/// Panics on a lost WAL, except when the follower let go for the
/// application (then it is opened anew and the image is its base, as the
/// replicator takes a new base).
fn follow(follower: &mut Follower, image: &mut Vec<u8>, held: &mut Option<Change>, gated: bool) {
    let boundary = gated.then(|| Utc::now() + chrono::Duration::milliseconds(4));
    let step = follower.step(boundary, Duration::from_millis(2)).unwrap();
    let (alone, step) = step.after(held.take());
    let mut steps: Vec<Step> = alone.map(Step::Changed).into_iter().collect();
    steps.push(step);
    match follower.maintain().unwrap() {
        Some(Step::Changed(c)) => *held = Some(c),
        Some(other) => steps.push(other),
        None => {}
    }
    for step in steps {
        match step {
            Step::Changed(c) => apply(image, &c),
            Step::Same { .. } => {}
            Step::Lost(why) if why == YIELDED => {
                follower.let_go();
                std::thread::sleep(Duration::from_millis(250));
                *follower = Follower::open(&follower.path.clone(), follower.wal_limit).unwrap();
                *image = pages_of(follower.held());
                *held = None;
            }
            Step::Lost(why) => panic!("lost the WAL: {why}"),
        }
    }
}

/// The image with the held upkeep's changes (what the replicator
/// publishes when it stops).
fn settled(image: &[u8], held: &Option<Change>) -> Vec<u8> {
    let mut image = image.to_vec();
    if let Some(c) = held {
        apply(&mut image, c);
    }
    image
}

#[test]
fn the_steps_rebuild_the_database_under_writes_and_every_checkpoint_mode() {
    let dir = tempfile::tempdir().unwrap();
    let (path, writer) = new_db(dir.path());
    let mut follower = Follower::open(&path, 4 << 20).unwrap();
    let mut image = pages_of(follower.held());
    let mut held = None;
    let stop = Arc::new(AtomicBool::new(false));
    let app = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let modes = ["PASSIVE", "FULL", "RESTART", "TRUNCATE"];
            let mut done = [0usize; 4];
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                writer
                    .execute(
                        "UPDATE t SET v = randomblob(300 + ?1 % 50) WHERE id = 1 + abs(random()) % 200",
                        [n as i64],
                    )
                    .unwrap();
                if n.is_multiple_of(7) {
                    writer
                        .execute("INSERT INTO t(v) VALUES (randomblob(2000))", [])
                        .unwrap();
                }
                if n.is_multiple_of(40) {
                    writer
                        .execute("DELETE FROM t WHERE id % 9 = 0 AND id > 200", [])
                        .unwrap();
                }
                if n.is_multiple_of(25) {
                    let m = (n / 25) as usize % 4;
                    let sql = format!("PRAGMA wal_checkpoint({})", modes[m]);
                    let t0 = Instant::now();
                    let busy: i64 = writer.query_row(&sql, [], |r| r.get(0)).unwrap();
                    assert!(
                        t0.elapsed() < Duration::from_secs(5),
                        "{sql} waited {:?}",
                        t0.elapsed()
                    );
                    assert_eq!(
                        busy, 0,
                        "the application's {} checkpoint was refused",
                        modes[m]
                    );
                    done[m] += 1;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            done
        })
    };
    let mut biggest_wal = 0;
    let started = Instant::now();
    let mut round = 0;
    while started.elapsed() < Duration::from_secs(6) {
        round += 1;
        follow(&mut follower, &mut image, &mut held, round % 2 == 0);
        biggest_wal = biggest_wal.max(follower.wal_size());
        std::thread::sleep(Duration::from_millis(30));
    }
    stop.store(true, Ordering::Relaxed);
    // The follower keeps moving until the application is done, as the
    // replicator does: a FULL/RESTART/TRUNCATE checkpoint the application
    // is in waits for the follower's next move, so joining without moving
    // would wait out its busy timeout.
    while !app.is_finished() {
        follow(&mut follower, &mut image, &mut held, false);
        std::thread::sleep(Duration::from_millis(30));
    }
    let done = app.join().unwrap();
    follow(&mut follower, &mut image, &mut held, false);
    assert!(
        done.iter().all(|d| *d > 0),
        "every checkpoint mode ran: {done:?}"
    );
    let image = settled(&image, &held);
    assert_eq!(image.len(), current(&path).len());
    assert!(
        image == current(&path),
        "the followed image differs from the database"
    );
    assert!(biggest_wal < 4 << 20, "the WAL grew to {biggest_wal} bytes");
}

#[test]
fn the_follower_keeps_the_wal_bounded_when_the_application_never_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let (path, writer) = new_db(dir.path());
    writer.execute_batch("PRAGMA wal_autocheckpoint=0").unwrap();
    let mut follower = Follower::open(&path, 256 << 10).unwrap();
    let mut image = pages_of(follower.held());
    let mut held = None;
    let mut biggest = 0;
    for round in 0..150 {
        for _ in 0..5 {
            writer
                .execute("INSERT INTO t(v) VALUES (randomblob(3000))", [])
                .unwrap();
        }
        writer
            .execute("DELETE FROM t WHERE id % 3 = 0 AND id > 200", [])
            .unwrap();
        follow(&mut follower, &mut image, &mut held, round % 3 == 0);
        biggest = biggest.max(std::fs::metadata(wal_path(&path)).unwrap().len());
    }
    assert!(
        settled(&image, &held) == current(&path),
        "the followed image differs from the database"
    );
    // 150 rounds wrote about 12 MiB of frames; the file stays near the limit.
    assert!(biggest < 1 << 20, "the WAL file grew to {biggest} bytes");
}

#[test]
fn the_upkeeps_changes_go_out_with_the_next_boundarys_step() {
    let dir = tempfile::tempdir().unwrap();
    let (path, writer) = new_db(dir.path());
    writer.execute_batch("PRAGMA wal_autocheckpoint=0").unwrap();
    let mut follower = Follower::open(&path, 128 << 10).unwrap();
    let mut image = pages_of(follower.held());
    let mut held = None;
    let stop = Arc::new(AtomicBool::new(false));
    let app = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0i64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                writer
                    .execute(
                        "INSERT INTO t(v) VALUES (randomblob(1000 + ?1 % 3000))",
                        [n],
                    )
                    .unwrap();
                writer
                    .execute(
                        "UPDATE t SET v = randomblob(200) WHERE id = 1 + ?1 % 200",
                        [n],
                    )
                    .unwrap();
                if n % 30 == 0 {
                    writer
                        .execute("DELETE FROM t WHERE id % 4 = 0 AND id > 200", [])
                        .unwrap();
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let (started, mut upkeeps) = (Instant::now(), 0);
    let mut round = 0;
    while started.elapsed() < Duration::from_secs(3) {
        round += 1;
        follow(&mut follower, &mut image, &mut held, round % 2 == 0);
        upkeeps += held.is_some() as usize;
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    app.join().unwrap();
    follow(&mut follower, &mut image, &mut held, false);
    // Upkeeps took changes the writer made after a boundary, and each went
    // out in front of the next step: the image is the database's.
    assert!(upkeeps >= 5, "only {upkeeps} upkeeps took changes");
    assert!(settled(&image, &held) == current(&path));
}

#[test]
fn a_held_change_then_the_next_is_one_step_to_the_next_state() {
    let change = |pages: &[(u32, u8)], size_pages, page_size| Change {
        pages: pages.iter().map(|(n, b)| (*n, vec![*b; 4])).collect(),
        size_pages,
        page_size,
        at: Utc::now(),
        exact: true,
    };
    let held = change(&[(1, 1), (3, 3), (5, 5), (7, 7)], 7, 4);
    let next = change(&[(2, 20), (3, 30), (6, 60)], 6, 4);
    let at = next.at;
    let both = held.then(next).unwrap();
    let pages: Vec<(u32, u8)> = both.pages.iter().map(|(n, p)| (*n, p[0])).collect();
    assert_eq!(pages, [(1, 1), (2, 20), (3, 30), (5, 5), (6, 60)]);
    assert_eq!((both.size_pages, both.at), (6, at));
    let other = change(&[(1, 9)], 1, 8);
    assert!(change(&[(1, 1)], 1, 4).then(other).is_err());
}

#[test]
fn a_replaced_database_or_a_vacuum_is_never_followed_wrongly() {
    let dir = tempfile::tempdir().unwrap();
    let (path, writer) = new_db(dir.path());
    let mut follower = Follower::open(&path, 4 << 20).unwrap();
    let mut image = pages_of(follower.held());
    writer
        .execute("DELETE FROM t WHERE id % 2 = 0", [])
        .unwrap();
    writer.execute_batch("VACUUM").unwrap();
    match follower.step(None, Duration::ZERO).unwrap() {
        Step::Changed(c) => apply(&mut image, &c),
        Step::Lost(_) => image = pages_of(follower.held()),
        Step::Same { .. } => panic!("a VACUUM changed nothing?"),
    }
    assert!(image == current(&path));

    // Another database put at the path (as a restore does).
    std::fs::create_dir_all(dir.path().join("o")).unwrap();
    let replacement = dir.path().join("o").join("app.db");
    let c = Connection::open(&replacement).unwrap();
    c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE x(a); INSERT INTO x VALUES (1);")
        .unwrap();
    drop(c);
    std::fs::rename(&replacement, &path).unwrap();
    assert!(matches!(
        follower.step(None, Duration::ZERO).unwrap(),
        Step::Lost(_)
    ));
}

#[test]
fn an_idle_database_steps_to_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _writer) = new_db(dir.path());
    let mut follower = Follower::open(&path, 4 << 20).unwrap();
    for _ in 0..3 {
        let boundary = Utc::now() + chrono::Duration::milliseconds(5);
        match follower
            .step(Some(boundary), Duration::from_millis(2))
            .unwrap()
        {
            Step::Same { at, exact } => {
                assert!(exact, "the writer lock was free");
                assert_eq!(at, boundary);
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_database_not_in_wal_mode_is_told() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE a(b)")
        .unwrap();
    assert!(!is_wal_mode(&path).unwrap());
    let e = Follower::open(&path, 1 << 20).err().expect("refused");
    assert!(e.to_string().contains("not in WAL mode"), "{e}");
}

#[test]
fn checksums_are_sqlites() {
    // A WAL header written by SQLite itself checks.
    let dir = tempfile::tempdir().unwrap();
    let (path, _w) = new_db(dir.path());
    let mut header = [0u8; 32];
    File::open(wal_path(&path))
        .unwrap()
        .read_exact_at(&mut header, 0)
        .unwrap();
    let parsed = Header::parse(&header).expect("SQLite's own header checks");
    assert_eq!(parsed.page_size, 4096);
    header[20] ^= 1;
    assert!(Header::parse(&header).is_none());
}

#[test]
fn a_database_whose_wal_never_held_a_frame_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.db");
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE a(b);")
            .unwrap();
    } // closed: SQLite folds and removes the WAL
    let mut follower = Follower::open(&path, 4 << 20).unwrap();
    let mut image = pages_of(follower.held());
    let mut held = None;
    let w = Connection::open(&path).unwrap();
    w.execute("INSERT INTO a VALUES (randomblob(5000))", [])
        .unwrap();
    follow(&mut follower, &mut image, &mut held, true);
    w.execute("INSERT INTO a VALUES (1)", []).unwrap();
    follow(&mut follower, &mut image, &mut held, false);
    assert!(settled(&image, &held) == current(&path));
}
