//! `offsite daemon`: scheduled jobs, a failing job that does not stop it,
//! clean shutdown on SIGTERM.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// Generous: the deadline guards against a hang, it does not time anything.
const DEADLINE: Duration = Duration::from_secs(180);

fn spawn_daemon(env: &Env) -> Child {
    let log = std::fs::File::create(env.dir.path().join("daemon.log")).unwrap();
    offsite_command()
        .arg("--config")
        .arg(env.dir.path().join("offsite.toml"))
        .arg("daemon")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

fn log(env: &Env) -> String {
    std::fs::read_to_string(env.dir.path().join("daemon.log")).unwrap_or_default()
}

fn manifests(env: &Env) -> usize {
    std::fs::read_dir(env.repo().join("snapshots"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

fn wait_exit(child: &mut Child, env: &Env) -> i32 {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("the daemon did not exit; log:\n{}", log(env));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn daemon_runs_scheduled_backups_survives_failures_and_stops_on_sigterm() {
    // Every second; the second source does not exist, so every backup job
    // fails (after backing up app), and the daemon must carry on.
    let env = Env::with_sources(|_| {
        "[[sources]]\nname = \"gone\"\nkind = \"files\"\npath = \"no-such-dir\"\n\n\
         [schedule]\nbackup = \"* * * * * *\"\n"
            .into()
    });
    env.make_db(&env.db(), 300);
    let mut child = spawn_daemon(&env);
    let start = Instant::now();
    while manifests(&env) < 2 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the daemon exited ({status}); log:\n{}", log(&env));
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no second snapshot; log:\n{}",
            log(&env)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    signal(&child, "-TERM");
    assert_eq!(wait_exit(&mut child, &env), 0, "log:\n{}", log(&env));

    let text = log(&env);
    assert!(text.contains("job=\"backup\""), "{text}");
    assert!(
        text.contains("failed") && text.contains("the daemon keeps running"),
        "{text}"
    );
    // Whatever the signal interrupted, every snapshot listed is whole.
    let list = snapshots(&env);
    assert!(list.len() >= 2);
    assert_eq!(list.len(), manifests(&env));
    let to = env.dir.path().join("restored.db");
    env.ok(&[
        "restore",
        "--source",
        "app",
        "--latest",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(dump_count(&to), 300);
}

#[test]
fn daemon_runs_status_and_drill_jobs() {
    let env = Env::with_sources(|_| {
        "[schedule]\nstatus = \"* * * * * *\"\ndrill = \"*/2 * * * * *\"\n".into()
    });
    append_status_file(&env);
    env.make_db(&env.db(), 100);
    env.ok(&["backup"]);
    let prom = env.dir.path().join("offsite.prom");
    let mut child = spawn_daemon(&env);
    let start = Instant::now();
    loop {
        let text = log(&env);
        let drilled = text
            .lines()
            .any(|l| l.contains("finished") && l.contains("job=\"drill\""));
        if drilled && prom.exists() {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the daemon exited ({status}); log:\n{text}");
        }
        assert!(start.elapsed() < DEADLINE, "jobs did not run; log:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    signal(&child, "-TERM");
    assert_eq!(wait_exit(&mut child, &env), 0, "log:\n{}", log(&env));
    let metrics = std::fs::read_to_string(&prom).unwrap();
    assert!(
        metrics.contains("offsite_status_ok{source=\"app\",target=\"local\"} 1"),
        "{metrics}"
    );
    let text = log(&env);
    assert!(text.contains("drill app @ local: PASSED"), "{text}");
}

fn append_status_file(env: &Env) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(env.dir.path().join("offsite.toml"))
        .unwrap();
    writeln!(f, "\n[status]\nprometheus_file = \"offsite.prom\"").unwrap();
}

#[test]
fn sigint_while_idle_exits_0() {
    // Due once a year: the daemon only waits.
    let env = Env::with_sources(|_| "[schedule]\nstatus = \"0 0 1 1 *\"\n".into());
    let mut child = spawn_daemon(&env);
    let start = Instant::now();
    while !log(&env).contains("scheduled") {
        assert!(start.elapsed() < DEADLINE, "not started: {}", log(&env));
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&child, "-INT");
    assert_eq!(wait_exit(&mut child, &env), 0, "log:\n{}", log(&env));
    assert!(log(&env).contains("SIGINT received, exiting"));
}

#[test]
fn daemon_config_mistakes_exit_2() {
    let env = Env::new();
    let (code, _, err) = env.run(&["daemon"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("[schedule] has no jobs"), "{err}");

    let env = Env::with_sources(|_| "[schedule]\nbackup = \"61 * * * *\"\n".into());
    let (code, _, err) = env.run(&["daemon"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("schedule.backup = \"61 * * * *\""), "{err}");
}

/// A daemon whose backup job is held at its healthchecks start ping (the
/// mock answers after a pause), so that a signal reliably arrives mid-job.
async fn daemon_mid_job(server: &wiremock::MockServer) -> (Env, Child) {
    use wiremock::matchers::path;
    use wiremock::{Mock, ResponseTemplate};
    Mock::given(path("/hc/start"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(4)))
        .mount(server)
        .await;
    Mock::given(path("/hc"))
        .respond_with(ResponseTemplate::new(200))
        .mount(server)
        .await;
    let uri = server.uri();
    let env = Env::with_sources(|_| {
        format!(
            "[[notify]]\nkind = \"healthchecks\"\nurl = \"{uri}/hc\"\n\n\
             [schedule]\nbackup = \"* * * * * *\"\n"
        )
    });
    env.make_db(&env.db(), 200);
    let child = spawn_daemon(&env);
    let start = Instant::now();
    while !log(&env).contains("starting job=\"backup\"") {
        assert!(start.elapsed() < DEADLINE, "no job started: {}", log(&env));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (env, child)
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_job_lets_it_finish_then_exits_0() {
    let server = wiremock::MockServer::start().await;
    let (env, mut child) = daemon_mid_job(&server).await;
    signal(&child, "-TERM");
    let (env, code) = tokio::task::spawn_blocking(move || {
        let code = wait_exit(&mut child, &env);
        (env, code)
    })
    .await
    .unwrap();
    let text = log(&env);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("finishing the running job"), "{text}");
    assert!(text.contains("finished job=\"backup\""), "{text}");
    let list = tokio::task::spawn_blocking(move || snapshots(&env))
        .await
        .unwrap();
    assert_eq!(list.len(), 1, "the job ran to the end");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_abandons_the_job_and_nothing_half_done_is_visible() {
    let server = wiremock::MockServer::start().await;
    let (env, mut child) = daemon_mid_job(&server).await;
    signal(&child, "-TERM");
    let start = Instant::now();
    while !log(&env).contains("finishing the running job") {
        assert!(start.elapsed() < DEADLINE, "{}", log(&env));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(&child, "-INT");
    let (env, code) = tokio::task::spawn_blocking(move || {
        let code = wait_exit(&mut child, &env);
        (env, code)
    })
    .await
    .unwrap();
    let text = log(&env);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("abandoning the job"), "{text}");
    assert_eq!(manifests(&env), 0, "no snapshot from the abandoned job");
}

#[test]
fn daemon_runs_prune_and_verify_jobs() {
    let env = Env::with_sources(|_| {
        "[retention]\nkeep_last = 1\n\n\
         [schedule]\nprune = \"* * * * * *\"\nverify = \"*/2 * * * * *\"\n"
            .into()
    });
    env.make_db(&env.db(), 200);
    for _ in 0..3 {
        env.ok(&["backup"]);
    }
    assert_eq!(manifests(&env), 3);
    let mut child = spawn_daemon(&env);
    let start = Instant::now();
    loop {
        let text = log(&env);
        let done = |job: &str| {
            text.lines()
                .any(|l| l.contains("finished") && l.contains(&format!("job=\"{job}\"")))
        };
        if done("prune") && done("verify") && manifests(&env) == 1 {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the daemon exited ({status}); log:\n{text}");
        }
        assert!(start.elapsed() < DEADLINE, "jobs did not run; log:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    signal(&child, "-TERM");
    assert_eq!(wait_exit(&mut child, &env), 0, "log:\n{}", log(&env));
    let to = env.dir.path().join("restored.db");
    env.ok(&[
        "restore",
        "--source",
        "app",
        "--latest",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(dump_count(&to), 200);
}
