//! Several `connector-server` nodes sharing one real PostgreSQL control plane and one real S3
//! store (the test server `make test` starts): any node answers any company, each snapshot is
//! recorded and told once, and a node killed with SIGKILL mid-ingest loses nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::server::{Received, Receiver, Server};
use crate::support::{S3, golden, sync_ok, tempdir, text};

const SERVER: &str = env!("CARGO_BIN_EXE_connector-server");
/// The role `.ci/pg.sh` makes for the control-plane tests.
const ROLE: &str = "connector";
const PASSWORD: &str = "connector-test";

/// A database of its own on the test PostgreSQL, dropped at the end.
struct Database {
    port: String,
    name: String,
}

impl Database {
    fn create() -> Database {
        let port = std::env::var("CONNECTOR_TEST_PG_PORT").expect(
            "CONNECTOR_TEST_PG_PORT is set by `make test`, which starts PostgreSQL on loopback",
        );
        let name = format!(
            "nodes_{}_{}",
            std::process::id(),
            connector::server::control::random_token(4)
        );
        let db = Database { port, name };
        db.admin(&format!("CREATE DATABASE {}", db.name));
        db
    }

    fn admin(&self, sql: &str) {
        let mut client = postgres::Client::connect(
            &format!(
                "host=127.0.0.1 port={} user={ROLE} password={PASSWORD} dbname=postgres",
                self.port
            ),
            postgres::NoTls,
        )
        .expect("connect to the test PostgreSQL as the tests' role");
        client.batch_execute(sql).unwrap();
    }

    /// The control URL, without its password (that comes from PGPASSWORD).
    fn url(&self) -> String {
        format!("postgres://{ROLE}@127.0.0.1:{}/{}", self.port, self.name)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        self.admin(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

/// Every data.synced event a receiver got, by snapshot: the webhook ids it came under.
fn synced_ids(got: &[Received]) -> BTreeMap<String, BTreeSet<String>> {
    let mut by_snapshot: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (headers, body, _) in got {
        // (a request the killed node had begun arrives cut off: it is no event)
        let Ok(event) = serde_json::from_str::<Value>(body) else {
            continue;
        };
        if event["type"] == "data.synced" {
            by_snapshot
                .entry(event["data"]["snapshotId"].as_str().unwrap().to_owned())
                .or_default()
                .insert(headers["webhook-id"].clone());
        }
    }
    by_snapshot
}

/// Waits until `server` serves a snapshot of `company` other than `first`; its id.
fn newer_than(server: &Server, key: &str, company: &str, first: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = server.wait_live(key, company, None);
        let id = status["invoices"]["snapshotId"].as_str().unwrap();
        if id != first {
            return id.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the new snapshot never went live: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `file` exists (a node reached a pause point).
fn wait_file(file: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !file.exists() {
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Requests `path` on every node in `bases` until `stop`; per node, the answers' snapshot ids
/// and the failures (status and body, or the connection error).
#[allow(clippy::type_complexity)]
fn load(
    bases: Vec<String>,
    key: String,
    path: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<(BTreeMap<String, usize>, Vec<String>)>> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap();
            let tasks: Vec<_> = bases
                .into_iter()
                .map(|base| {
                    let (client, key, path, stop) =
                        (client.clone(), key.clone(), path.clone(), stop.clone());
                    tokio::spawn(async move {
                        let (mut seen, mut failures) = (BTreeMap::new(), Vec::new());
                        while !stop.load(Ordering::Relaxed) {
                            match client
                                .get(format!("{base}{path}"))
                                .bearer_auth(&key)
                                .send()
                                .await
                            {
                                Ok(resp) if resp.status() == 200 => {
                                    let snap = resp
                                        .headers()
                                        .get("x-snapshot-id")
                                        .and_then(|v| v.to_str().ok())
                                        .unwrap_or("none")
                                        .to_owned();
                                    *seen.entry(snap).or_insert(0) += 1;
                                }
                                Ok(resp) => failures.push(format!(
                                    "{}: {}",
                                    resp.status(),
                                    resp.text().await.unwrap_or_default()
                                )),
                                Err(e) => {
                                    failures.push(e.to_string());
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                }
                            }
                        }
                        (seen, failures)
                    })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        })
    })
}

#[test]
fn three_nodes_share_one_postgresql_and_store_and_a_node_killed_mid_ingest_loses_nothing() {
    let db = Database::create();
    let s3 = S3::from_env();
    let store = format!("s3://{}/published", s3.bucket("nodes"));
    let dir = tempdir();
    // What every node shares: the control plane, the store, the key that seals webhook
    // secrets. The password reaches the nodes through PGPASSWORD, never their arguments.
    let mut env = s3.env();
    env.push(("CONNECTOR_CONTROL", db.url()));
    env.push(("PGPASSWORD", PASSWORD.into()));
    env.push((
        "CONNECTOR_SECRETS_KEY_FILE",
        dir.path().join("secrets.key").display().to_string(),
    ));
    let args = [
        "--allow-private-webhooks",
        "--webhook-backoff-scale",
        "0.001",
        "--rate-limit",
        "100000",
        "--ingest-lease-secs",
        "3",
        "--delivery-lease-secs",
        "3",
    ];
    // Nodes B and C stop at their second load (the second snapshot) until the test lets
    // them go: node A is then the one that claims that snapshot's recording.
    let paused = |node: &str| {
        let mut env = env.clone();
        env.push(("CONNECTOR_PAUSE_AT", "ingest-load:2".into()));
        env.push((
            "CONNECTOR_PAUSE_FILE",
            dir.path()
                .join(format!("{node}.paused"))
                .display()
                .to_string(),
        ));
        env
    };
    let b = Server::start_env(&dir.path().join("b"), &store, &args, &paused("b"));
    let c = Server::start_env(&dir.path().join("c"), &store, &args, &paused("c"));

    // An API client (the operator's command, on the same control plane), its company made
    // on one node and its webhooks on another.
    let out = Command::new(SERVER)
        .args(["admin", "create-client", "Lender", "--state-dir"])
        .arg(dir.path().join("admin"))
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let key = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .find_map(|l| l.split(": ").nth(1).filter(|k| k.starts_with("ck_")))
        .expect("an API key is printed")
        .to_owned();
    let co = b.company(&key, "Golden Café Ltd");
    let all = Receiver::start(vec![200]);
    let failing = Receiver::start(vec![200]);
    for (receiver, types) in [
        (&all, json!(["data.synced", "company.status_changed"])),
        (&failing, json!(["data.synced"])),
    ] {
        let (status, hook, _) = c.call(
            "POST",
            Some(&key),
            "/webhooks",
            Some(json!({"url": receiver.url, "eventTypes": types})),
        );
        assert_eq!(status, 201, "{hook}");
    }

    // The first snapshot: both nodes serve it, and it is told once.
    let company = golden(&dir.path().join("company"));
    let connector_state = dir.path().join("connector");
    sync_ok(
        &company.odbc,
        &co,
        &connector_state,
        Some(&store),
        &s3.env(),
    );
    let first = b.wait_live(&key, &co, None)["invoices"]["snapshotId"]
        .as_str()
        .unwrap()
        .to_owned();
    c.wait_live(&key, &co, Some(&first));
    // A third node, started now, serves the company it never saw created (it loads it on
    // demand); it dies recording its first snapshot: the events queued, the record not
    // written.
    let mut a_env = env.clone();
    a_env.push(("CONNECTOR_KILL_AT", "ingest-queued".into()));
    let mut a = Server::start_env(&dir.path().join("a"), &store, &args, &a_env);
    a.wait_live(&key, &co, Some(&first));
    let got = all.wait_for(2);
    let types: Vec<String> = got
        .iter()
        .map(|(_, body, _)| serde_json::from_str::<Value>(body).unwrap()["type"].to_string())
        .collect();
    assert_eq!(
        types.iter().filter(|t| t.contains("data.synced")).count(),
        1,
        "{types:?}"
    );

    // Under load on every node, the receiver of one subscription failing, a second
    // snapshot: node A claims it, queues its events and is killed before recording it.
    *failing.answers.lock().unwrap() = vec![503];
    let stop = Arc::new(AtomicBool::new(false));
    let path = format!("/companies/{co}/data/invoices?pageSize=20");
    let survivors = load(
        vec![b.base.clone(), c.base.clone()],
        key.clone(),
        path.clone(),
        stop.clone(),
    );
    let victim = load(vec![a.base.clone()], key.clone(), path, stop.clone());
    company
        .sqlite()
        .execute(
            "UPDATE SALES_LEDGER SET NAME = 'Many Nodes Ltd' WHERE ACCOUNT_REF = 'ALPHA01'",
            [],
        )
        .unwrap();
    sync_ok(
        &company.odbc,
        &co,
        &connector_state,
        Some(&store),
        &s3.env(),
    );
    let killed = a
        .exited(Duration::from_secs(60))
        .expect("node A was killed");
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(killed.signal(), Some(9), "node A: {killed:?}");
    }
    // Let B and C load it: the claim of the dead node runs out, one of them records it.
    for node in ["b", "c"] {
        let file = dir.path().join(format!("{node}.paused"));
        wait_file(&file, &format!("node {node} reaching its second load"));
        std::fs::remove_file(&file).unwrap();
    }
    let second = newer_than(&b, &key, &co, &first);
    c.wait_live(&key, &co, Some(&second));
    assert_eq!(
        b.ok(&key, &format!("/companies/{co}/data/customers/ALPHA01"))["customerName"],
        "Many Nodes Ltd"
    );
    // Once the second snapshot's event has been refused by the failing receiver (a delivery
    // the dead node held comes due again when its lease runs out), the receiver comes back;
    // every delivery ends delivered.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !failing
        .requests
        .lock()
        .unwrap()
        .iter()
        .any(|(_, body, status)| *status == 503 && body.contains(second.as_str()))
    {
        assert!(
            Instant::now() < deadline,
            "the failing receiver was never sent the second snapshot's event"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    *failing.answers.lock().unwrap() = vec![200];
    let deadline = Instant::now() + Duration::from_secs(60);
    let (all_ids, failing_ids) = loop {
        let all_ids = synced_ids(&all.requests.lock().unwrap());
        let failing_got = failing.requests.lock().unwrap().clone();
        let delivered: BTreeSet<&String> = failing_got
            .iter()
            .filter(|(_, _, status)| *status == 200)
            .map(|(h, _, _)| &h["webhook-id"])
            .collect();
        let failing_ids = synced_ids(&failing_got);
        let every = failing_ids
            .values()
            .flatten()
            .all(|id| delivered.contains(id));
        if all_ids.len() == 2 && failing_ids.len() == 2 && every {
            break (all_ids, failing_ids);
        }
        assert!(
            Instant::now() < deadline,
            "not every event was delivered: {all_ids:?} {failing_ids:?} delivered {delivered:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    stop.store(true, Ordering::Relaxed);
    // One event per snapshot per subscriber, under one id however many tries it took.
    for ids in [&all_ids, &failing_ids] {
        assert_eq!(ids.keys().collect::<Vec<_>>(), [&first, &second], "{ids:?}");
        assert!(ids.values().all(|set| set.len() == 1), "{ids:?}");
    }
    // The history has each snapshot once.
    let history = c.ok(&key, &format!("/companies/{co}/snapshots"));
    let rows: Vec<(String, String)> = history["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["snapshotId"].as_str().unwrap().to_owned(),
                r["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (second.clone(), "live".to_owned()),
            (first.clone(), "superseded".to_owned())
        ],
        "{history}"
    );
    // B and C answered every request, from one snapshot or the other.
    let answered = survivors.join().unwrap();
    for (node, (seen, failures)) in ["b", "c"].iter().zip(&answered) {
        assert!(failures.is_empty(), "node {node} failed: {failures:?}");
        assert!(
            seen.keys().all(|s| *s == first || *s == second),
            "node {node}: {seen:?}"
        );
        assert!(seen.values().sum::<usize>() > 20, "node {node}: {seen:?}");
    }
    let (victim_seen, _) = &victim.join().unwrap()[0];
    assert!(
        victim_seen.contains_key(&first),
        "node A answered: {victim_seen:?}"
    );
    // The password is in no node's log.
    for node in ["a", "b", "c"] {
        let log = std::fs::read_to_string(dir.path().join(node).join("server.err")).unwrap();
        assert!(!log.contains(PASSWORD), "node {node} logged the password");
    }
}
