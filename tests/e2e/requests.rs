//! What a backup costs in requests to an S3 target (moto, through a counting
//! proxy): the checks that what was stored is whole must not make an
//! incremental backup, the nightly case, expensive. A guard, not a timing.

use backend_objstore::testing::{start_moto, FaultProxy};
use rusqlite::Connection;

use crate::support::*;

/// Requests an incremental backup may make; today's run needs about 30.
const INCREMENTAL_BUDGET: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_s3_backup_stays_within_its_request_budget() {
    let moto = start_moto("offsite-e2e").await;
    let proxy = FaultProxy::start(moto.port).await;
    let target = format!(
        "[[targets]]\nname = \"remote\"\nkind = \"s3\"\nbucket = \"offsite-e2e\"\n\
         prefix = \"host\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\nallow_http = true\n",
        proxy.url()
    );
    let env = Env::with_remote_target(
        &target,
        4,
        &[
            ("AWS_ACCESS_KEY_ID", "e2e-access-key"),
            ("AWS_SECRET_ACCESS_KEY", "e2e-secret"),
        ],
    );
    env.make_db(&env.db(), 100_000);
    let run = |args: &[&str]| tokio::task::block_in_place(|| env.ok(args));
    let mut counts = Vec::new();
    for round in 0..4 {
        if round > 0 {
            // A day's worth of changes: a few hundred rows.
            Connection::open(env.db())
                .unwrap()
                .execute(
                    "UPDATE tasks SET body = body || ?1 WHERE id % 300 = ?2",
                    (format!(" day {round}"), round),
                )
                .unwrap();
        }
        let before = proxy.forwarded();
        run(&["backup"]);
        counts.push(proxy.forwarded() - before);
    }
    eprintln!("HTTP requests per backup (full, then incremental): {counts:?}");
    for (round, n) in counts.iter().enumerate().skip(1) {
        assert!(
            *n <= INCREMENTAL_BUDGET,
            "incremental backup {round} made {n} requests: {counts:?}"
        );
    }
}
