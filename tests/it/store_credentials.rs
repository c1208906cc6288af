//! Wrong S3 credentials, against a store that checks them. The shared test server takes any
//! signature, so each test here starts a second moto server process on its own loopback port
//! with authentication enforced (`INITIAL_NO_AUTH_ACTION_COUNT`): after the first three
//! actions, it knows only the access keys made through its IAM API, recomputes every request's
//! SigV4 signature with the key's secret (SignatureDoesNotMatch otherwise), and applies the
//! key's IAM policy (AccessDenied). The connector publishing and the server ingesting must
//! refuse at once, name the setting to fix and the store, never print the secret, and leave
//! the last good snapshot latest (and live).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use connector::publish::{Store, StoreConfig};

use crate::server::Server;
use crate::support::{golden, sync, sync_ok, tempdir, text};

/// The IAM set-up, run with boto3 from the test virtualenv: an admin user (its own three
/// actions are the unauthenticated ones), a bucket made with the admin's key, and a reader
/// allowed to read and list but not to write. Prints both keys as JSON.
const SET_UP: &str = r#"
import sys, json, boto3
endpoint, bucket = sys.argv[1], sys.argv[2]
def client(service, key):
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
def user(iam, name, actions):
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}))
    return iam.create_access_key(UserName=name)["AccessKey"]
admin = user(client("iam", {"AccessKeyId": "none", "SecretAccessKey": "none"}), "admin", "*")
reader = user(client("iam", admin), "reader", ["s3:GetObject", "s3:ListBucket", "s3:ListBucketMultipartUploads"])
client("s3", admin).create_bucket(Bucket=bucket)
print(json.dumps({"writer": [admin["AccessKeyId"], admin["SecretAccessKey"]],
                  "reader": [reader["AccessKeyId"], reader["SecretAccessKey"]]}))
"#;

/// An access key made through the checking server's IAM API.
#[derive(Clone)]
struct Key {
    id: String,
    secret: String,
}

/// A moto server process that checks credentials, killed when dropped.
struct CheckedS3 {
    child: Child,
    endpoint: String,
    log: PathBuf,
    bucket: String,
    /// Allowed everything.
    writer: Key,
    /// Allowed to read and list, not to write.
    reader: Key,
}

impl CheckedS3 {
    fn start(dir: &Path) -> CheckedS3 {
        let python = PathBuf::from(std::env::var("CONNECTOR_TEST_PYTHON").expect(
            "CONNECTOR_TEST_PYTHON is not set: run the tests with `make test` (it names the virtualenv holding moto_server)",
        ));
        let moto = python.with_file_name("moto_server");
        let port = {
            let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            free.local_addr().unwrap().port()
        };
        let log = dir.join("checked-s3.log");
        let child = Command::new(&moto)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "3")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", moto.display()));
        let mut server = CheckedS3 {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            log,
            bucket: "checked".into(),
            writer: Key {
                id: String::new(),
                secret: String::new(),
            },
            reader: Key {
                id: String::new(),
                secret: String::new(),
            },
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline && matches!(server.child.try_wait(), Ok(None)),
                "the checking S3 server did not start on port {port}: {}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = Command::new(&python)
            .args(["-c", SET_UP, &server.endpoint, &server.bucket])
            .output()
            .unwrap();
        assert!(out.status.success(), "IAM set-up: {}", text(&out));
        let keys: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let key = |who: &str| Key {
            id: keys[who][0].as_str().unwrap().to_owned(),
            secret: keys[who][1].as_str().unwrap().to_owned(),
        };
        server.writer = key("writer");
        server.reader = key("reader");
        server
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Requests the server has answered so far (one log line each, once the log is still).
    fn requests(&self) -> usize {
        let count = || self.log_text().matches(" HTTP/1.1").count();
        let mut last = count();
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let now = count();
            if now == last {
                return now;
            }
            last = now;
        }
    }

    /// The AWS settings reaching this server, with `key`'s credentials (none when `None`).
    fn env(&self, key: Option<&Key>) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
        ];
        if let Some(key) = key {
            env.push(("AWS_ACCESS_KEY_ID", key.id.clone()));
            env.push(("AWS_SECRET_ACCESS_KEY", key.secret.clone()));
        }
        env
    }

    /// `latest.json` of `company` under `url`, read with the writer's key.
    fn latest(&self, url: &str, company: &str) -> Option<Vec<u8>> {
        let mut config = StoreConfig::new(url);
        config.options = self
            .env(Some(&self.writer))
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        let store = Store::open(&config).expect("open the checking store with the writer's key");
        connector::publish::runtime()
            .block_on(store.get_bytes(&format!("{company}/latest.json")))
            .expect("the writer's key reads latest.json")
            .map(|b| b.to_vec())
    }
}

impl Drop for CheckedS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One way of getting the credentials wrong: the environment, the setting the message must
/// name, the one it must not (it is right), and the secret it must not show.
struct Wrong {
    what: &'static str,
    env: Vec<(&'static str, String)>,
    names: &'static str,
    not: Option<&'static str>,
    secret: String,
}

/// Missing, a wrong secret for a real key, and a key the store does not know.
fn wrong_credentials(s3: &CheckedS3) -> Vec<Wrong> {
    let mut missing_id = s3.env(None);
    missing_id.push(("AWS_SECRET_ACCESS_KEY", s3.writer.secret.clone()));
    let wrong_secret = Key {
        id: s3.writer.id.clone(),
        secret: "NotTheSecretOfThisKey0123456789abcdefABC".into(),
    };
    let unknown = Key {
        id: "AKIAUNKNOWNTOTHESTORE".into(),
        secret: s3.writer.secret.clone(),
    };
    vec![
        Wrong {
            what: "no credentials at all",
            env: s3.env(None),
            names: "AWS_ACCESS_KEY_ID",
            not: None,
            secret: s3.writer.secret.clone(),
        },
        Wrong {
            what: "a secret without an access key id",
            env: missing_id,
            names: "AWS_ACCESS_KEY_ID",
            not: None,
            secret: s3.writer.secret.clone(),
        },
        Wrong {
            what: "a wrong secret for a real access key",
            env: s3.env(Some(&wrong_secret)),
            names: "AWS_SECRET_ACCESS_KEY",
            not: Some("AWS_ACCESS_KEY_ID"),
            secret: wrong_secret.secret,
        },
        Wrong {
            what: "an access key the store does not know",
            env: s3.env(Some(&unknown)),
            names: "AWS_ACCESS_KEY_ID",
            not: Some("AWS_SECRET_ACCESS_KEY"),
            secret: unknown.secret,
        },
    ]
}

/// The message names the store (and so its bucket) and the setting to fix, and not the secret.
fn assert_names_the_fix(msg: &str, wrong: &Wrong, url: &str, bucket: &str) {
    assert!(
        msg.contains(url) && msg.contains(bucket),
        "{}: the message does not name the store {url}: {msg}",
        wrong.what
    );
    assert!(
        msg.contains(wrong.names),
        "{}: the message does not name {}: {msg}",
        wrong.what,
        wrong.names
    );
    if let Some(right) = wrong.not {
        assert!(
            !msg.contains(right),
            "{}: the message sends the user to {right}, which is right: {msg}",
            wrong.what
        );
    }
    assert!(
        !msg.contains(&wrong.secret) && !msg.contains(&wrong.secret[..12]),
        "{}: the message shows the secret: {msg}",
        wrong.what
    );
}

#[test]
fn sync_refuses_missing_wrong_or_unknown_s3_credentials_at_once_naming_the_setting_and_keeps_latest()
 {
    let dir = tempdir();
    let s3 = CheckedS3::start(dir.path());
    let company = golden(&dir.path().join("company"));
    let state = dir.path().join("state");
    let url = format!("s3://{}/p", s3.bucket);
    // With the right key the store takes the connector's signed requests: the refusals below
    // are the credentials', not the server refusing everything.
    sync_ok(
        &company.odbc,
        "golden",
        &state,
        Some(&url),
        &s3.env(Some(&s3.writer)),
    );
    let good = s3
        .latest(&url, "golden")
        .expect("the good sync made latest.json");

    for wrong in wrong_credentials(&s3) {
        let requests = s3.requests();
        let started = Instant::now();
        let out = sync(
            &company.odbc,
            "golden",
            &state,
            Some(&url),
            &["--store-timeout", "60"],
            &wrong.env,
        );
        let msg = text(&out);
        // A permanent error (1), not "the store is down, the snapshot waits" (75).
        assert_eq!(out.status.code(), Some(1), "{}: {msg}", wrong.what);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{}: retried for {:?}: {msg}",
            wrong.what,
            started.elapsed()
        );
        assert_names_the_fix(&msg, &wrong, &url, &s3.bucket);
        if wrong.env.iter().all(|(k, _)| *k != "AWS_ACCESS_KEY_ID") {
            assert_eq!(
                s3.requests(),
                requests,
                "{}: a request was sent without credentials: {msg}",
                wrong.what
            );
        }
        assert_eq!(
            s3.latest(&url, "golden").as_deref(),
            Some(&good[..]),
            "{}: latest.json changed",
            wrong.what
        );
    }

    // A key that may read but not write: the store check passes, the snapshot is made, and the
    // upload is refused. The last good snapshot stays latest and the new one waits.
    company
        .sqlite()
        .execute("UPDATE SALES_LEDGER SET NAME = 'Renamed Customer Ltd' WHERE ACCOUNT_REF = (SELECT MIN(ACCOUNT_REF) FROM SALES_LEDGER)", [])
        .unwrap();
    let out = sync(
        &company.odbc,
        "golden",
        &state,
        Some(&url),
        &["--store-timeout", "60"],
        &s3.env(Some(&s3.reader)),
    );
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(1), "read-only key: {msg}");
    assert!(
        msg.contains(&url) && msg.contains("uploading") && msg.contains("policy"),
        "read-only key: the message does not name the store, the refused upload and the policy: {msg}"
    );
    assert!(!msg.contains(&s3.reader.secret), "read-only key: {msg}");
    assert_eq!(
        s3.latest(&url, "golden").as_deref(),
        Some(&good[..]),
        "a refused upload moved latest.json"
    );
    let outbox = state.join("companies/golden/outbox");
    let waiting: Vec<String> = std::fs::read_dir(&outbox)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    assert_eq!(waiting.len(), 1, "the refused snapshot is not waiting");
    // The key fixed: the waiting snapshot is published, then a new one is latest.
    let json_path = dir.path().join("fixed.json");
    let out = sync(
        &company.odbc,
        "golden",
        &state,
        Some(&url),
        &["--json", json_path.to_str().unwrap()],
        &s3.env(Some(&s3.writer)),
    );
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    assert_eq!(
        report["published"][0]["snapshot_id"], waiting[0],
        "{report:#}"
    );
    let latest: serde_json::Value =
        serde_json::from_slice(&s3.latest(&url, "golden").unwrap()).unwrap();
    assert_eq!(latest["snapshotId"], report["snapshot_id"], "{report:#}");
}

/// Waits until the server's log says something about reading `company`'s `latest.json` fails,
/// and returns that line.
fn refusal_logged(server: &Server, company: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(server.state.join("server.err")).unwrap_or_default();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains(company) && l.contains("latest.json"))
        {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the server logged nothing about {company}'s latest.json: {log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn server_refuses_missing_wrong_or_unknown_s3_credentials_naming_the_setting_and_keeps_serving() {
    let dir = tempdir();
    let s3 = CheckedS3::start(dir.path());
    let url = format!("s3://{}/p", s3.bucket);
    let state = dir.path().join("server");
    let mut server = Server::start_env(&state, &url, &[], &s3.env(Some(&s3.writer)));
    let key = server.client("Lender");
    let company_id = server.company(&key, "Golden Café Ltd");
    let company = golden(&dir.path().join("company"));
    sync_ok(
        &company.odbc,
        &company_id,
        &dir.path().join("connector"),
        Some(&url),
        &s3.env(Some(&s3.writer)),
    );
    // With the right key the server reads the store: the refusals below are the credentials'.
    let live = server.wait_live(&key, &company_id, None)["invoices"]["snapshotId"].clone();
    server.stop();

    for wrong in wrong_credentials(&s3) {
        if wrong.env.iter().all(|(k, _)| *k != "AWS_ACCESS_KEY_ID") {
            // Refused as it starts, before any request.
            let requests = s3.requests();
            let mut child = Command::new(env!("CARGO_BIN_EXE_connector-server"))
                .args(["serve", "--store", &url, "--listen", "127.0.0.1:0"])
                .arg("--state-dir")
                .arg(&state)
                .envs(wrong.env.iter().map(|(k, v)| (*k, v)))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let out = child.wait_with_output().unwrap();
            let msg = text(&out);
            assert!(
                !out.status.success() && out.status.code().is_some(),
                "{}: the server started (or hung) instead of refusing: {msg}",
                wrong.what
            );
            assert_names_the_fix(&msg, &wrong, &url, &s3.bucket);
            assert_eq!(
                s3.requests(),
                requests,
                "{}: a request was sent: {msg}",
                wrong.what
            );
            continue;
        }
        let mut server = Server::start_env(&state, &url, &[], &wrong.env);
        let line = refusal_logged(&server, &company_id);
        assert_names_the_fix(&line, &wrong, &url, &s3.bucket);
        // The snapshot live before stays live.
        let status = server.ok(&key, &format!("/companies/{company_id}/dataStatus"));
        assert_eq!(status["invoices"]["snapshotId"], live, "{}", wrong.what);
        server.stop();
        let log = std::fs::read_to_string(state.join("server.err")).unwrap();
        assert!(
            !log.contains(&wrong.secret),
            "{}: the server's log shows the secret",
            wrong.what
        );
    }
}
