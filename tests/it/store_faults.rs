//! A broken network between the connector or the server and S3: a fault-injection proxy
//! (`tests/faults/s3_fault_proxy.py`) in front of the real S3 server process resets
//! connections, answers S3's 503 SlowDown and 500 InternalError, cuts answers halfway and
//! stalls. Publishing and ingesting through it: nothing partial is ever visible, nothing is
//! lost, and a failure that outlasts the retries is reported by name.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::server::Server;
use crate::support::{S3, golden, sync, tempdir, text, verify};

/// The proxy process; stopped on drop.
struct FaultProxy {
    child: Child,
    endpoint: String,
}

impl FaultProxy {
    fn start(s3: &S3) -> FaultProxy {
        let python = std::env::var("CONNECTOR_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let upstream = s3.endpoint.rsplit(':').next().unwrap().to_owned();
        let mut child = Command::new(python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/faults/s3_fault_proxy.py"
            ))
            .arg(upstream)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the fault proxy");
        let line = crate::support::first_line(&mut child);
        FaultProxy {
            child,
            endpoint: format!("http://127.0.0.1:{line}"),
        }
    }

    fn control(&self, method: &str, body: Option<Value>) -> Value {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client = reqwest::Client::new();
            let mut req = client.request(
                method.parse().unwrap(),
                format!("{}/__faults", self.endpoint),
            );
            if let Some(b) = body {
                req = req.json(&b);
            }
            req.send().await.unwrap().json().await.unwrap()
        })
    }

    /// Arms `rules` (replacing any armed before).
    fn arm(&self, rules: Value) {
        self.control("POST", Some(rules));
    }

    /// How many requests each armed rule broke.
    fn done(&self) -> Vec<u64> {
        self.control("GET", None)
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["done"].as_u64().unwrap_or(0))
            .collect()
    }

    /// The S3 settings that reach the S3 server through this proxy; the client gives up on a
    /// request after 2 s (a stall longer than that is a time-out, then a retry).
    fn env(&self, s3: &S3) -> Vec<(&'static str, String)> {
        let mut env: Vec<(&'static str, String)> = s3
            .env()
            .into_iter()
            .filter(|(k, _)| *k != "AWS_ENDPOINT")
            .collect();
        env.push(("AWS_ENDPOINT", self.endpoint.clone()));
        env.push(("AWS_TIMEOUT", "2s".into()));
        env
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The snapshot `latest.json` names, read straight from the S3 server.
fn latest(s3: &S3, bucket: &str, company: &str) -> Option<String> {
    let (status, body) = s3.http("GET", &format!("/{bucket}/p/{company}/latest.json"));
    if status == 404 {
        return None;
    }
    let json = &body[body.find("\r\n\r\n").unwrap() + 4..];
    let latest: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {body}"));
    latest["snapshotId"].as_str().map(str::to_owned)
}

/// Every kind of fault, each a few times, on requests of `method`.
fn every_fault(method: &str) -> Value {
    json!([
        {"fault": "slowdown", "method": method, "times": 3},
        {"fault": "reset", "method": method, "times": 2},
        {"fault": "internal", "method": method, "times": 2},
        {"fault": "truncate", "method": method, "times": 2},
        {"fault": "stall", "method": method, "times": 1, "seconds": 3},
    ])
}

/// The S3 server, a new bucket on it, a fault proxy in front of it, a folder, and the
/// store URL of the bucket.
fn faulty_store(hint: &str) -> (S3, String, FaultProxy, tempfile::TempDir, String) {
    let s3 = S3::from_env();
    let bucket = s3.bucket(hint);
    let proxy = FaultProxy::start(&s3);
    let store = format!("s3://{bucket}/p");
    (s3, bucket, proxy, tempdir(), store)
}

/// No snapshot of company `co` was refused.
pub(crate) fn none_refused(server: &Server, key: &str, co: &str) {
    let snaps = server.ok(key, &format!("/companies/{co}/snapshots"));
    assert!(
        snaps["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] != "failed"),
        "{snaps}"
    );
}

#[test]
fn publishing_through_a_broken_network_shows_nothing_partial_and_loses_nothing() {
    let (s3, bucket, proxy, dir, store) = faulty_store("faults-publish");
    let company = golden(&dir.path().join("company"));
    let state = dir.path().join("connector");
    let env = proxy.env(&s3);

    // Every fault on the uploads: retried, and the sync publishes whole.
    proxy.arm(every_fault("PUT"));
    let out = sync(&company.odbc, "acme", &state, Some(&store), &[], &env);
    assert!(out.status.success(), "{}", text(&out));
    let done = proxy.done();
    assert!(
        done.iter().all(|&n| n > 0),
        "a fault was never met: {done:?}"
    );
    let first = latest(&s3, &bucket, "acme").expect("published");
    let checked = verify(&store, "acme", &[], &s3.env());
    assert!(checked.status.success(), "{}", text(&checked));

    // Uploads that keep failing past the retries: the sync fails naming the store, the
    // pointer still names the first snapshot, and the next sync publishes what waited.
    company
        .sqlite()
        .execute(
            "UPDATE SALES_LEDGER SET NAME = 'Alpha Faulted Ltd' WHERE ACCOUNT_REF = 'ALPHA01'",
            [],
        )
        .unwrap();
    proxy.arm(json!([{"fault": "reset", "method": "PUT", "times": -1}]));
    let started = Instant::now();
    let out = sync(
        &company.odbc,
        "acme",
        &state,
        Some(&store),
        &["--store-timeout", "3"],
        &env,
    );
    let said = text(&out);
    assert_eq!(out.status.code(), Some(75), "{said}");
    assert!(said.contains(&bucket) || said.contains("store"), "{said}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        latest(&s3, &bucket, "acme").as_deref(),
        Some(first.as_str())
    );
    let checked = verify(&store, "acme", &[], &s3.env());
    assert!(checked.status.success(), "{}", text(&checked));

    proxy.arm(json!([]));
    let out = sync(&company.odbc, "acme", &state, Some(&store), &[], &env);
    assert!(out.status.success(), "{}", text(&out));
    let second = latest(&s3, &bucket, "acme").unwrap();
    assert_ne!(second, first);
    let checked = verify(&store, "acme", &[], &s3.env());
    assert!(checked.status.success(), "{}", text(&checked));
}

#[test]
fn the_server_ingests_through_a_broken_network_and_serves_nothing_partial() {
    let (s3, bucket, proxy, dir, store) = faulty_store("faults-ingest");
    let server = Server::start_env(&dir.path().join("server"), &store, &[], &proxy.env(&s3));
    let key = server.client("Lender");
    let co = server.company(&key, "Golden Café Ltd");
    let company = golden(&dir.path().join("company"));
    let state = dir.path().join("connector");
    // (the connector publishes straight to S3; only the server's reads are broken)
    let out = sync(&company.odbc, &co, &state, Some(&store), &[], &s3.env());
    assert!(out.status.success(), "{}", text(&out));
    let first = latest(&s3, &bucket, &co).unwrap();
    server.wait_live(&key, &co, Some(&first));
    let page = |key: &str| {
        server.ok(
            key,
            &format!("/companies/{co}/data/customers?pageSize=5000"),
        )
    };
    let before = page(&key);

    company
        .sqlite()
        .execute(
            "UPDATE SALES_LEDGER SET NAME = 'Alpha Faulted Ltd' WHERE ACCOUNT_REF = 'ALPHA01'",
            [],
        )
        .unwrap();
    proxy.arm(every_fault("GET"));
    let out = sync(&company.odbc, &co, &state, Some(&store), &[], &s3.env());
    assert!(out.status.success(), "{}", text(&out));
    let second = latest(&s3, &bucket, &co).unwrap();
    // Until the new snapshot is live, every answer is the first one, whole.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, body, headers) = server.call(
            "GET",
            Some(&key),
            &format!("/companies/{co}/data/customers?pageSize=5000"),
            None,
        );
        assert_eq!(status, 200, "{body}");
        let answered = headers["x-snapshot-id"].to_str().unwrap().to_owned();
        if answered == second {
            let names: Vec<&str> = body["results"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|r| r["customerName"].as_str())
                .collect();
            assert!(names.contains(&"Alpha Faulted Ltd"), "{names:?}");
            assert_eq!(
                body["results"].as_array().unwrap().len(),
                before["results"].as_array().unwrap().len()
            );
            break;
        }
        assert_eq!(answered, first);
        assert_eq!(body["results"], before["results"]);
        assert!(
            Instant::now() < deadline,
            "the new snapshot never went live through the faults: {:?}\n{}",
            proxy.done(),
            std::fs::read_to_string(dir.path().join("server/server.err")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let done = proxy.done();
    assert!(
        done.iter().all(|&n| n > 0),
        "a fault was never met: {done:?}"
    );
    // nothing was refused for the network's faults
    none_refused(&server, &key, &co);
}

#[test]
fn a_slow_store_for_one_clients_companies_does_not_hold_up_another_clients() {
    let (s3, bucket, proxy, dir, store) = faulty_store("faults-order");
    let server = Server::start_env(&dir.path().join("server"), &store, &[], &proxy.env(&s3));
    let (key_a, key_b) = (server.client("Slow lender"), server.client("Other lender"));
    // Client A has more companies than are ingested at once (4), and every read of their
    // objects stalls past the store client's time-out.
    let a: Vec<String> = (0..5)
        .map(|i| server.company(&key_a, &format!("Slow {i}")))
        .collect();
    let b = server.company(&key_b, "Quick Ltd");
    proxy.arm(Value::Array(
        a.iter()
            .map(|co| json!({"fault": "stall", "method": "GET", "path": co, "times": -1, "seconds": 30}))
            .collect(),
    ));
    let company = golden(&dir.path().join("company"));
    for co in a.iter().chain([&b]) {
        let state = dir.path().join(format!("connector-{co}"));
        let out = sync(&company.odbc, co, &state, Some(&store), &[], &s3.env());
        assert!(out.status.success(), "{}", text(&out));
    }
    let started = Instant::now();
    let live_b = latest(&s3, &bucket, &b).unwrap();
    server.wait_live(&key_b, &b, Some(&live_b));
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(20),
        "client B's company waited {waited:?} behind client A's slow store"
    );
    for co in &a {
        let (status, body) = server.get(&key_a, &format!("/companies/{co}/data/customers"));
        assert_eq!(
            status, 404,
            "{co} should still be waiting for its store: {body}"
        );
    }
    // The store answers again: nothing was lost, every company of A goes live (once the
    // store client's retries, up to a minute, end or succeed).
    proxy.arm(json!([]));
    let deadline = Instant::now() + Duration::from_secs(120);
    for co in &a {
        let id = latest(&s3, &bucket, co).unwrap();
        loop {
            let (_, status) = server.get(&key_a, &format!("/companies/{co}/dataStatus"));
            if status["invoices"]["snapshotId"] == id.as_str() {
                break;
            }
            assert!(Instant::now() < deadline, "{co} never went live: {status}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // (what the slow store did to A is not a refusal of A's snapshots)
    for co in &a {
        none_refused(&server, &key_a, co);
    }
}
