//! `connector-server` over real HTTP on loopback: the real server process, a real store the
//! real connector published to, and an HTTP client that knows nothing of the server's code.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Company, golden, sync_ok, tempdir, text};

const SERVER: &str = env!("CARGO_BIN_EXE_connector-server");
/// The metrics token test servers are started with.
pub(crate) const METRICS_TOKEN: &str = "metrics-token-of-the-tests";

/// A running server; stopped with SIGTERM when dropped.
pub(crate) struct Server {
    child: Child,
    pub(crate) base: String,
    pub(crate) state: PathBuf,
    pub(crate) store: String,
}

impl Server {
    pub(crate) fn start(state: &Path, store: &str, extra: &[&str]) -> Server {
        Self::start_env(state, store, extra, &[])
    }

    /// Starts a server with extra environment (the S3 settings of a store).
    pub(crate) fn start_env(
        state: &Path,
        store: &str,
        extra: &[&str],
        env: &[(&str, String)],
    ) -> Server {
        let poll: &[&str] = if extra.contains(&"--poll-secs") {
            &[]
        } else {
            &["--poll-secs", "0.2"]
        };
        let listen: &[&str] = if extra.contains(&"--listen") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let mut child = Command::new(SERVER)
            .env("CONNECTOR_METRICS_TOKEN", METRICS_TOKEN)
            .args(["serve", "--store", store])
            .args(listen)
            .arg("--state-dir")
            .arg(state)
            .args(poll)
            .args(extra)
            .envs(env.iter().map(|(k, v)| (*k, v)))
            .stdout(Stdio::piped())
            .stderr({
                std::fs::create_dir_all(state).unwrap();
                std::fs::File::create(state.join("server.err")).unwrap()
            })
            .spawn()
            .expect("start connector-server");
        let line = crate::support::first_line(&mut child);
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| {
                let err = std::fs::read_to_string(state.join("server.err")).unwrap_or_default();
                panic!("unexpected first line: {line:?}; stderr: {err}")
            })
            .to_owned();
        Server {
            child,
            base,
            state: state.to_owned(),
            store: store.to_owned(),
        }
    }

    pub(crate) fn stop(&mut self) {
        // Once reaped, its pid may be another process's: it is never signalled again.
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// How the server process ended, once it has (within `within`).
    pub(crate) fn exited(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// An API client and its key, made with the admin command.
    pub(crate) fn client(&self, name: &str) -> String {
        let out = Command::new(SERVER)
            .args(["admin", "create-client", name, "--state-dir"])
            .arg(&self.state)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .find_map(|l| {
                l.split(": ")
                    .nth(1)
                    .filter(|k| k.starts_with("ck_"))
                    .map(str::to_owned)
            })
            .expect("an API key is printed")
    }

    pub(crate) fn call(
        &self,
        method: &str,
        key: Option<&str>,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        call_at(&self.base, method, key, path, body)
    }

    pub(crate) fn get(&self, key: &str, path: &str) -> (u16, Value) {
        let (s, v, _) = self.call("GET", Some(key), path, None);
        assert_ne!(s, 500, "{path}: {v}");
        (s, v)
    }

    pub(crate) fn ok(&self, key: &str, path: &str) -> Value {
        let (s, v) = self.get(key, path);
        assert_eq!(s, 200, "{path}: {v}");
        v
    }

    pub(crate) fn company(&self, key: &str, name: &str) -> String {
        let (s, v, _) = self.call(
            "POST",
            Some(key),
            "/companies",
            Some(json!({ "name": name })),
        );
        assert_eq!(s, 201, "{v}");
        v["id"].as_str().unwrap().to_owned()
    }

    /// Waits until `snapshot` (or any, when None) is the company's live snapshot, served
    /// and recorded in its history (its events queued).
    pub(crate) fn wait_live(&self, key: &str, company: &str, snapshot: Option<&str>) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (mut code, status) = self.get(key, &format!("/companies/{company}/dataStatus"));
            if code != 429 {
                assert_eq!(code, 200, "{status}");
                let live = &status["invoices"]["snapshotId"];
                if live.is_string() && snapshot.is_none_or(|s| live == s) {
                    let history;
                    (code, history) = self.get(key, &format!("/companies/{company}/snapshots"));
                    let recorded = code == 200
                        && history["results"]
                            .as_array()
                            .is_some_and(|h| h.iter().any(|r| r["snapshotId"] == *live));
                    if recorded {
                        return status;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no snapshot went live: {status}");
            // rate-limited: long enough for the two calls' tokens to come back
            std::thread::sleep(Duration::from_millis(if code == 429 { 2100 } else { 100 }));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn latest_id(store_dir: &Path, company: &str) -> String {
    let latest: Value = serde_json::from_slice(
        &std::fs::read(store_dir.join(company).join("latest.json")).unwrap(),
    )
    .unwrap();
    latest["snapshotId"].as_str().unwrap().to_owned()
}

pub(crate) struct Setup {
    _dir: tempfile::TempDir,
    pub(crate) server: Server,
    pub(crate) key: String,
    pub(crate) company_id: String,
    pub(crate) company: Company,
    pub(crate) store_dir: PathBuf,
    pub(crate) connector_state: PathBuf,
}

impl Setup {
    /// Renames customer ALPHA01 in the source, syncs, and waits until that snapshot is live.
    pub(crate) fn rename_and_sync(&self, name: &str) -> String {
        self.company
            .sqlite()
            .execute(
                "UPDATE SALES_LEDGER SET NAME = ?1 WHERE ACCOUNT_REF = 'ALPHA01'",
                [name],
            )
            .unwrap();
        let id = self.sync();
        self.server
            .wait_live(&self.key, &self.company_id, Some(&id));
        id
    }

    /// Subscribes the setup client to every event at `url`; the subscription as created
    /// (`id`, `secret`, …).
    pub(crate) fn subscribe(&self, url: &str) -> Value {
        let (status, hook, _) = self.server.call(
            "POST",
            Some(&self.key),
            "/webhooks",
            Some(json!({ "url": url })),
        );
        assert_eq!(status, 201, "{hook}");
        hook
    }

    /// The newest delivery of webhook `hook_id`, once it has ended `failed`.
    fn wait_delivery_failed(&self, hook_id: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let list = self
                .server
                .ok(&self.key, &format!("/webhooks/{hook_id}/deliveries"));
            let d = list["results"][0].clone();
            if d["status"] == "failed" {
                return d;
            }
            assert!(Instant::now() < deadline, "{list}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The public reason the setup company's snapshot `id` was refused, once it is recorded.
    fn refused_detail(&self, id: &str) -> String {
        let co = &self.company_id;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let snaps = self
                .server
                .ok(&self.key, &format!("/companies/{co}/snapshots"));
            if let Some(f) = snaps["results"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["snapshotId"] == id && r["status"] == "failed")
            {
                return f["detail"].as_str().unwrap_or_default().to_owned();
            }
            assert!(Instant::now() < deadline, "{id} was not refused: {snaps}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn sync(&self) -> String {
        sync_ok(
            &self.company.odbc,
            &self.company_id,
            &self.connector_state,
            Some(&self.server.store),
            &[],
        );
        latest_id(&self.store_dir, &self.company_id)
    }
}

/// One request to the server at `base`: its status, JSON body (text as a JSON string if it
/// is not JSON) and headers.
pub(crate) fn call_at(
    base: &str,
    method: &str,
    key: Option<&str>,
    path: &str,
    body: Option<Value>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = reqwest::Client::new();
        let mut req = client.request(method.parse().unwrap(), format!("{base}{path}"));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("the server answers");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value, headers)
    })
}

/// A server, a client, a company created through the API, and the golden company synced to it.
pub(crate) fn setup(extra: &[&str]) -> Setup {
    setup_env(extra, &[])
}

/// [`setup`] with extra environment for the server.
pub(crate) fn setup_env(extra: &[&str], env: &[(&str, String)]) -> Setup {
    let dir = tempdir();
    let store_dir = dir.path().join("store");
    std::fs::create_dir_all(&store_dir).unwrap();
    let store = connector::publish::file_url(&store_dir);
    let server = Server::start_env(&dir.path().join("server"), &store, extra, env);
    let key = server.client("Lender");
    let company_id = server.company(&key, "Golden Café Ltd");
    let company = golden(&dir.path().join("company"));
    let connector_state = dir.path().join("connector");
    let setup = Setup {
        server,
        key,
        company_id,
        company,
        store_dir,
        connector_state,
        _dir: dir,
    };
    let id = setup.sync();
    setup
        .server
        .wait_live(&setup.key, &setup.company_id, Some(&id));
    setup
}

#[test]
fn a_synced_company_is_served_with_the_hand_computed_figures_paged_and_filtered() {
    let s = setup(&[]);
    let (key, co) = (&s.key, &s.company_id);
    let all = s.server.ok(key, &format!("/companies/{co}/data/invoices"));
    assert_eq!(all["totalResults"], 7, "{all}");
    assert_eq!(all["pageNumber"], 1);
    assert_eq!(all["pageSize"], 100);
    // Figures from fixtures/golden/normalised.toml, worked out by hand; money as exact strings.
    let split = s
        .server
        .ok(key, &format!("/companies/{co}/data/invoices/4-SI-20250520"));
    assert_eq!(split["totalAmount"], "54.18", "{split}");
    assert_eq!(split["issueDate"], "2025-05-20");
    let deleted = s.server.ok(
        key,
        &format!("/companies/{co}/data/invoices?query=isDeleted%3Dtrue"),
    );
    assert_eq!(deleted["totalResults"], 1);
    assert_eq!(deleted["results"][0]["id"], "19");
    // Paging: every id exactly once, in order, across pages of 2, with next/previous links.
    // The expected ids and issue dates (all different) are the fixture's hand-computed ones.
    let fixture: toml::Table = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/golden/normalised.toml"),
    )
    .unwrap()
    .parse()
    .unwrap();
    let mut expected: Vec<(String, String)> = fixture["invoice_ids"]
        .as_table()
        .unwrap()
        .iter()
        .map(|(id, v)| {
            let date = v.as_str().unwrap().split(' ').nth(3).unwrap().to_owned();
            (date, id.clone())
        })
        .collect();
    expected.sort_by(|a, b| b.cmp(a));
    let mut seen = Vec::new();
    let mut page = 1;
    loop {
        let v = s.server.ok(
            key,
            &format!("/companies/{co}/data/invoices?pageSize=2&page={page}&orderBy=-issueDate"),
        );
        assert_eq!(v["pageNumber"], page, "{v}");
        assert_eq!(v["totalResults"], expected.len(), "{v}");
        let results = v["results"].as_array().unwrap();
        assert!(
            !results.is_empty() && results.len() <= 2,
            "page {page}: {v}"
        );
        seen.extend(results.iter().map(|r| {
            (
                r["issueDate"].as_str().unwrap().to_owned(),
                r["id"].as_str().unwrap().to_owned(),
            )
        }));
        assert_eq!(v["_links"]["previous"].is_object(), page > 1, "{v}");
        if !v["_links"]["next"].is_object() {
            break;
        }
        assert!(page < 100, "the next links never end: {v}");
        page += 1;
    }
    assert_eq!(
        seen, expected,
        "pages of 2 ordered by -issueDate must give every invoice once, newest first"
    );
    assert_eq!(page, expected.len().div_ceil(2), "pages");
    // Filters: grouping, ||, dates, decimals, dot paths, contains.
    let q = |query: &str| {
        let encoded: String = query
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        s.server.ok(
            key,
            &format!("/companies/{co}/data/invoices?query={encoded}"),
        )["totalResults"]
            .as_u64()
            .unwrap()
    };
    // "4" 300.36 and "16" 500.45 are the only live invoices over 300.
    assert_eq!(q("totalAmount>300&&isDeleted=false"), 2);
    assert_eq!(
        q("{issueDate>=2025-05-01&&issueDate<2025-06-01}||id=\"16\""),
        3
    );
    assert_eq!(
        q("customerRef.id=ALPHA01||customerRef.id=MUNOZ01||customerRef.id=EURO01"),
        7
    );
    assert_eq!(q("id~si-2025"), 2);
}

#[test]
fn one_clients_key_never_reaches_another_clients_company() {
    let s = setup(&[]);
    let other = s.server.client("Other lender");
    let co = &s.company_id;
    for path in [
        format!("/companies/{co}"),
        format!("/companies/{co}/dataStatus"),
        format!("/companies/{co}/snapshots"),
        format!("/companies/{co}/data/invoices"),
        format!("/companies/{co}/data/invoices/16"),
        "/companies/co00000000000000000000".to_owned(),
    ] {
        let (status, body) = s.server.get(&other, &path);
        assert_eq!(status, 404, "{path}: {body}");
        assert!(
            !body.to_string().contains("Golden"),
            "{path} leaked: {body}"
        );
    }
    let (s_, v, _) = s.server.call(
        "POST",
        Some(&other),
        &format!("/companies/{co}/snapshots/published"),
        None,
    );
    assert_eq!(s_, 404, "{v}");
    assert_eq!(s.server.ok(&other, "/companies")["results"], json!([]));
    assert_eq!(
        s.server.ok(&s.key, "/companies")["results"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // No key, a wrong key.
    for key in [None, Some("ck_wrong")] {
        let (status, body, _) = s.server.call("GET", key, "/companies", None);
        assert_eq!(status, 401, "{body}");
    }
}

#[test]
fn bad_requests_are_4xx_naming_the_fault_never_500() {
    let s = setup(&[]);
    let co = &s.company_id;
    let long = "a".repeat(2100);
    for (path, says) in [
        (
            format!("/companies/{co}/data/invoices?query=nosuch%3D1"),
            "unknown field \"nosuch\"",
        ),
        (
            format!("/companies/{co}/data/invoices?query=issueDate%3Etomorrow"),
            "is a date",
        ),
        (
            format!("/companies/{co}/data/invoices?query=%7Bstatus%3DPaid"),
            "unbalanced braces",
        ),
        (
            format!("/companies/{co}/data/invoices?query=totalAmount%3E1x"),
            "exact decimal",
        ),
        (
            format!("/companies/{co}/data/invoices?query=status%3D{long}%26%26"),
            "limit is 2048",
        ),
        (
            format!("/companies/{co}/data/invoices?pageSize=0"),
            "pageSize",
        ),
        (
            format!("/companies/{co}/data/invoices?pageSize=5001"),
            "pageSize",
        ),
        (format!("/companies/{co}/data/invoices?page=-1"), "page"),
        (
            format!("/companies/{co}/data/invoices?orderBy=lineItems"),
            "orderBy",
        ),
        (
            format!("/companies/{co}/data/widgets"),
            "unknown data type \"widgets\"",
        ),
        (format!("/companies/{co}/data/invoices/nope"), "not found"),
        (
            format!("/companies/{co}/data/invoices?snapshot=20200101T000000000Z-00000000"),
            "not loaded",
        ),
        // dates the query language reads but DuckDB would not: a fifth-digit year, a leap second
        (
            format!("/companies/{co}/data/invoices?query=issueDate%3E%2B10000-01-01"),
            "years 0001 to 9999",
        ),
        (
            format!("/companies/{co}/data/invoices?query=modifiedDate%3E-0001-01-01T00:00:00Z"),
            "years 0001 to 9999",
        ),
        (
            format!("/companies/{co}/data/invoices?query=modifiedDate%3E2016-12-31T23:59:60Z"),
            "leap second",
        ),
    ] {
        let (status, body) = s.server.get(&s.key, &path);
        assert!((400..500).contains(&status), "{path}: {status} {body}");
        assert!(
            body["error"].as_str().unwrap_or_default().contains(says),
            "{path}: {body}"
        );
    }
    let (status, body, _) = s.server.call(
        "POST",
        Some(&s.key),
        "/companies",
        Some(json!({"nom": "x"})),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("\"name\""),
        "{body}"
    );
}

#[test]
fn every_error_answer_has_the_json_error_shape() {
    let s = setup(&[]);
    let co = &s.company_id;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::new();
    // (method, path, content type and body, status): refusals axum makes before a handler runs
    type Case = (
        &'static str,
        String,
        Option<(&'static str, &'static str)>,
        u16,
    );
    let cases: [Case; 5] = [
        ("GET", "/no/such/route".into(), None, 404),
        ("DELETE", "/companies".into(), None, 405),
        ("PATCH", format!("/companies/{co}/data/invoices"), None, 405),
        (
            "GET",
            format!("/companies/{co}/data/invoices/%FF%FE"),
            None,
            400,
        ),
        (
            "POST",
            format!("/companies/{co}/connector/checkin"),
            Some(("application/json", "{")),
            401,
        ),
    ];
    for (method, path, body, status) in cases {
        let (got, content_type, allow, text) = rt.block_on(async {
            let mut req = client
                .request(method.parse().unwrap(), format!("{}{path}", s.server.base))
                .bearer_auth(&s.key);
            if let Some((ty, body)) = body {
                req = req.header("content-type", ty).body(body.to_owned());
            }
            let resp = req.send().await.unwrap();
            let header = |h: &str| {
                resp.headers()
                    .get(h)
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default()
            };
            let (ty, allow) = (header("content-type"), header("allow"));
            (
                resp.status().as_u16(),
                ty,
                allow,
                resp.text().await.unwrap(),
            )
        });
        assert_eq!(got, status, "{method} {path}: {text}");
        assert!(
            content_type.starts_with("application/json"),
            "{method} {path}: {content_type}: {text}"
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["status"], status, "{method} {path}: {v}");
        assert!(
            !v["error"].as_str().unwrap_or_default().is_empty(),
            "{method} {path}: {v}"
        );
        if status == 405 {
            assert!(!allow.is_empty(), "{method} {path}: no Allow header");
        }
    }
}

#[test]
fn modified_date_follows_content_and_disappeared_records_stay_deleted_across_restarts() {
    let mut s = setup(&[]);
    let (key, co) = (s.key.clone(), s.company_id.clone());
    let before = s.server.ok(
        &key,
        &format!("/companies/{co}/data/customers?pageSize=100"),
    );
    // id -> modifiedDate of every record on a page.
    let dates = |v: &Value| -> std::collections::BTreeMap<String, String> {
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["id"].as_str().unwrap().to_owned(),
                    r["modifiedDate"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let first = dates(&before);
    // In Sage: one customer renamed, one stock item deleted.
    let db = s.company.sqlite();
    db.execute(
        "UPDATE SALES_LEDGER SET NAME = 'Alpha Renamed Ltd' WHERE ACCOUNT_REF = 'ALPHA01'",
        [],
    )
    .unwrap();
    let item: String = db
        .query_row(
            "SELECT STOCK_CODE FROM STOCK ORDER BY STOCK_CODE LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let kept = s
        .server
        .ok(&key, &format!("/companies/{co}/data/items/{item}"));
    assert_eq!(kept["isDeleted"], false, "{kept}");
    db.execute("DELETE FROM STOCK WHERE STOCK_CODE = ?1", [&item])
        .unwrap();
    drop(db);
    let second = s.sync();
    s.server.wait_live(&key, &co, Some(&second));
    let after = s.server.ok(
        &key,
        &format!("/companies/{co}/data/customers?pageSize=100"),
    );
    for r in after["results"].as_array().unwrap() {
        let id = r["id"].as_str().unwrap();
        let changed = r["modifiedDate"].as_str().unwrap() != first[id];
        assert_eq!(changed, id == "ALPHA01", "{id}: {r}");
    }
    // An incremental pull from the first snapshot's time returns just what changed.
    let since = &first["ALPHA01"];
    let later = after["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "ALPHA01")
        .unwrap()["modifiedDate"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(later.as_str() > since.as_str());
    let pulled = s.server.ok(
        &key,
        &format!("/companies/{co}/data/customers?query=modifiedDate%3E%3D{later}"),
    );
    assert_eq!(pulled["totalResults"], 1, "{pulled}");
    let gone = s
        .server
        .ok(&key, &format!("/companies/{co}/data/items/{item}"));
    assert_eq!(gone["isDeleted"], true, "{gone}");
    // Its deletion is a change: marked at the time the second snapshot went live.
    assert_eq!(gone["modifiedDate"], later.as_str(), "{gone}");
    assert_ne!(gone["modifiedDate"], kept["modifiedDate"], "{gone}");
    // The previous snapshot is still queryable, and history lists both.
    let deadline = Instant::now() + Duration::from_secs(30);
    let snaps = loop {
        let snaps = s.server.ok(&key, &format!("/companies/{co}/snapshots"));
        if snaps["results"].as_array().unwrap().len() >= 2 || Instant::now() > deadline {
            break snaps;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let ids: Vec<&str> = snaps["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["snapshotId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{snaps}");
    assert_eq!(snaps["results"][0]["status"], "live");
    let old = s.server.ok(
        &key,
        &format!("/companies/{co}/data/customers/ALPHA01?snapshot={}", ids[1]),
    );
    assert_ne!(old["customerName"], "Alpha Renamed Ltd");
    // A restart keeps every modifiedDate, and the deleted item: served as deleted, by id and
    // to a client asking for deletions, exactly as before.
    let deleted_items = |s: &Setup| {
        let page = s.server.ok(
            &key,
            &format!("/companies/{co}/data/items?query=isDeleted%3Dtrue&pageSize=5000"),
        );
        page["results"].as_array().unwrap().clone()
    };
    let deleted_before = deleted_items(&s);
    assert!(
        deleted_before.contains(&gone),
        "{item} is not listed as deleted: {deleted_before:?}"
    );
    let state = s.server.state.clone();
    let store = s.server.store.clone();
    s.server.stop();
    s.server = Server::start(&state, &store, &[]);
    let restarted = s.server.ok(
        &key,
        &format!("/companies/{co}/data/customers?pageSize=100"),
    );
    assert_eq!(restarted["results"], after["results"]);
    // The deleted item itself, still served as it was when it was deleted.
    let deleted_item_unchanged = |s: &Setup, when: &str| {
        let (status, still) = s
            .server
            .get(&key, &format!("/companies/{co}/data/items/{item}"));
        assert_eq!(status, 200, "the deleted item is gone {when}: {still}");
        assert_eq!(still, gone, "the deleted item changed {when}");
    };
    deleted_item_unchanged(&s, "across a restart");
    assert_eq!(deleted_items(&s), deleted_before);
    // The next snapshot, built on the restored one: the deleted item stays deleted with its
    // deletion time, and only the customer changed again gets a new modifiedDate.
    s.company
        .sqlite()
        .execute(
            "UPDATE SALES_LEDGER SET NAME = 'Alpha Third Ltd' WHERE ACCOUNT_REF = 'ALPHA01'",
            [],
        )
        .unwrap();
    let third = s.sync();
    s.server.wait_live(&key, &co, Some(&third));
    deleted_item_unchanged(&s, "in the snapshot after a restart");
    let third_customers = s.server.ok(
        &key,
        &format!("/companies/{co}/data/customers?pageSize=100"),
    );
    let (was, now) = (dates(&after), dates(&third_customers));
    assert_eq!(
        was.keys().collect::<Vec<_>>(),
        now.keys().collect::<Vec<_>>()
    );
    for (id, date) in &now {
        assert_eq!(
            date != &was[id],
            id == "ALPHA01",
            "{id}: {date} was {}",
            was[id]
        );
    }
}

#[test]
fn a_snapshot_that_fails_verification_is_recorded_told_to_the_client_and_the_previous_one_stays_live()
 {
    let s = setup(&["--allow-private-webhooks"]);
    let (key, co) = (&s.key, &s.company_id);
    let good = latest_id(&s.store_dir, co);
    let receiver = Receiver::start(vec![200]);
    let (status, hook, _) = s.server.call(
        "POST",
        Some(key),
        "/webhooks",
        Some(json!({"url": receiver.url, "eventTypes": ["sync.failed", "company.status_changed"]})),
    );
    assert_eq!(status, 201, "{hook}");
    // A snapshot whose manifest claims other control totals than its data: written by hand
    // into the store, as a broken publisher would.
    let latest_path = s.store_dir.join(co).join("latest.json");
    let latest: Value = serde_json::from_slice(&std::fs::read(&latest_path).unwrap()).unwrap();
    let mut manifest: Value = serde_json::from_slice(
        &std::fs::read(s.store_dir.join(latest["manifestKey"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let bad_id = "29991231T235959999Z-0badf00d";
    manifest["snapshotId"] = json!(bad_id);
    manifest["dataTypes"]["invoices"]["controlTotals"]["sums"]["totalAmount"] = json!("1.00");
    let bytes = serde_json::to_vec_pretty(&manifest).unwrap();
    let key_path = format!("{co}/snapshots/{bad_id}/manifest.json");
    std::fs::create_dir_all(s.store_dir.join(&key_path).parent().unwrap()).unwrap();
    std::fs::write(s.store_dir.join(&key_path), &bytes).unwrap();
    use sha2::Digest;
    let sha: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(
        &latest_path,
        serde_json::to_vec(
            &json!({"snapshotId": bad_id, "manifestKey": key_path, "manifestSha256": sha}),
        )
        .unwrap(),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let failed = loop {
        let snaps = s.server.ok(key, &format!("/companies/{co}/snapshots"));
        if let Some(f) = snaps["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["status"] == "failed")
        {
            break f.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the bad snapshot was not recorded: {snaps}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(failed["snapshotId"], bad_id);
    assert!(
        failed["detail"]
            .as_str()
            .unwrap()
            .contains("control totals"),
        "{failed}"
    );
    let status = s.server.ok(key, &format!("/companies/{co}/dataStatus"));
    assert_eq!(status["invoices"]["snapshotId"], good.as_str());
    assert_eq!(
        s.server.ok(key, &format!("/companies/{co}/data/invoices"))["totalResults"],
        7
    );
    // The client is told, as of a sync that failed: sync.failed naming the snapshot and why,
    // and the company's status going from Fetched to Failing.
    let events: Vec<Value> = receiver
        .wait_for(2)
        .iter()
        .map(|(_, body, _)| serde_json::from_str(body).unwrap())
        .collect();
    let of = |t: &str| {
        events
            .iter()
            .find(|e| e["type"] == t)
            .unwrap_or_else(|| panic!("no {t} among {events:?}"))
            .clone()
    };
    let failed_event = of("sync.failed");
    assert_eq!(failed_event["data"]["companyId"], co.as_str());
    assert_eq!(failed_event["data"]["snapshotId"], bad_id);
    assert_eq!(failed_event["data"]["reason"], "snapshot_refused");
    assert!(
        failed_event["data"]["message"]
            .as_str()
            .unwrap()
            .contains("control totals"),
        "{failed_event}"
    );
    let changed = of("company.status_changed");
    assert_eq!(
        (&changed["data"]["from"], &changed["data"]["to"]),
        (&json!("Fetched"), &json!("Failing")),
        "{changed}"
    );
    // What the client is told quotes no SQL and no server folder.
    for told in [failed["detail"].to_string(), failed_event.to_string()] {
        assert!(
            !told.contains("SELECT") && !told.contains(&s.server.state.display().to_string()),
            "{told}"
        );
    }
}

/// Hex SHA-256 of `bytes`.
fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes into the store, as whoever can write the company's prefix would, a snapshot `id`
/// made from the latest manifest with `edit` applied, and points `latest.json` at it.
fn plant(s: &Setup, id: &str, edit: impl FnOnce(&mut Value)) {
    let co = &s.company_id;
    let latest_path = s.store_dir.join(co).join("latest.json");
    let latest: Value = serde_json::from_slice(&std::fs::read(&latest_path).unwrap()).unwrap();
    let mut manifest: Value = serde_json::from_slice(
        &std::fs::read(s.store_dir.join(latest["manifestKey"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    manifest["snapshotId"] = json!(id);
    edit(&mut manifest);
    let bytes = serde_json::to_vec_pretty(&manifest).unwrap();
    let key_path = format!("{co}/snapshots/{id}/manifest.json");
    std::fs::create_dir_all(s.store_dir.join(&key_path).parent().unwrap()).unwrap();
    std::fs::write(s.store_dir.join(&key_path), &bytes).unwrap();
    let pointer =
        json!({"snapshotId": id, "manifestKey": key_path, "manifestSha256": sha256_hex(&bytes)});
    std::fs::write(&latest_path, serde_json::to_vec(&pointer).unwrap()).unwrap();
}

/// Writes `bytes` into the store as the setup company's invoices data file, under its own
/// content-addressed key, and points the manifest's file entry at it (key, size and hash
/// agreeing).
fn put_data_file(s: &Setup, entry: &mut Value, bytes: &[u8]) {
    let sha = sha256_hex(bytes);
    let file_key = format!("{}/data/invoices/{sha}.parquet", s.company_id);
    let file = s.store_dir.join(&file_key);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, bytes).unwrap();
    entry["key"] = json!(file_key);
    entry["bytes"] = json!(bytes.len());
    entry["sha256"] = json!(sha);
}

#[test]
fn a_load_failing_on_the_servers_own_disk_is_tried_again_not_refused() {
    // The server held just before loading its second snapshot: the files it fetched into
    // its cache are taken from its disk meanwhile (a clean-up, a disk fault), so DuckDB
    // fails to read them. That says nothing about the snapshot: it must not be refused
    // (a refusal is final, and the client would be told the sync failed); it goes live
    // once the files are fetched again.
    let dir = tempdir();
    let paused = dir.path().join("paused");
    let s = setup_env(
        &["--allow-private-webhooks"],
        &[
            ("CONNECTOR_PAUSE_AT", "ingest-load:2".to_owned()),
            ("CONNECTOR_PAUSE_FILE", paused.display().to_string()),
        ],
    );
    let (key, co) = (&s.key, &s.company_id);
    let receiver = Receiver::start(vec![200]);
    let (status, hook, _) = s.server.call(
        "POST",
        Some(key),
        "/webhooks",
        Some(json!({"url": receiver.url, "eventTypes": ["sync.failed", "data.synced"]})),
    );
    assert_eq!(status, 201, "{hook}");
    s.company
        .sqlite()
        .execute(
            "UPDATE SALES_LEDGER SET NAME = 'Alpha Renamed' WHERE ACCOUNT_REF = 'ALPHA01'",
            [],
        )
        .unwrap();
    let second = s.sync();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !paused.exists() {
        assert!(
            Instant::now() < deadline,
            "the server never began loading {second}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let cache = s.server.state.join("cache").join(co);
    let mut taken = 0;
    for file in std::fs::read_dir(&cache).unwrap() {
        let path = file.unwrap().path();
        if path.extension().is_some_and(|e| e == "parquet") {
            std::fs::remove_file(&path).unwrap();
            taken += 1;
        }
    }
    assert!(taken > 0, "no cached files in {}", cache.display());
    std::fs::remove_file(&paused).unwrap();
    let status = s.server.wait_live(key, co, Some(&second));
    assert_eq!(status["invoices"]["snapshotId"], second.as_str());
    let customer = s.server.ok(
        key,
        &format!("/companies/{co}/data/customers?query=customerName%3D%22Alpha%20Renamed%22"),
    );
    assert_eq!(customer["totalResults"], 1, "{customer}");
    crate::store_faults::none_refused(&s.server, key, co);
    assert_eq!(refused_total(&s), 0);
    let events: Vec<Value> = receiver
        .wait_for(1)
        .iter()
        .map(|(_, body, _)| serde_json::from_str(body).unwrap())
        .collect();
    assert!(
        events.iter().all(|e| e["type"] != "sync.failed"),
        "{events:?}"
    );
    let log = std::fs::read_to_string(s.server.state.join("server.err")).unwrap();
    assert!(
        log.contains("Could not load a published snapshot now"),
        "the failed load was not logged as one to try again: {log}"
    );
}

#[test]
fn a_restarted_server_listens_before_taking_back_its_companies_and_serves_each_on_demand() {
    let mut s = setup(&[]);
    let (key, co) = (s.key.clone(), s.company_id.clone());
    let live = latest_id(&s.store_dir, &co);
    let before = s.server.ok(&key, &format!("/companies/{co}/data/invoices"));
    let (state, store) = (s.server.state.clone(), s.server.store.clone());
    s.server.stop();
    // Restarted with the taking back of the company held: the server answers meanwhile.
    let dir = tempdir();
    let paused = dir.path().join("paused");
    let env = [
        ("CONNECTOR_PAUSE_AT", "restore".to_owned()),
        ("CONNECTOR_PAUSE_FILE", paused.display().to_string()),
    ];
    let (tx, rx) = std::sync::mpsc::channel();
    let starting = std::thread::spawn(move || {
        let server = Server::start_env(&state, &store, &[], &env);
        let _ = tx.send(());
        server
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(30)).is_ok(),
        "the server did not listen while a company's saved state was still to take back"
    );
    s.server = starting.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !paused.exists() {
        assert!(
            Instant::now() < deadline,
            "the company was never taken back"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, companies, _) = s.server.call("GET", Some(&key), "/companies", None);
    assert_eq!(status, 200, "{companies}");
    // The company's own request waits for it, and is answered from what was live, not from
    // a reload (the same records, modifiedDate included).
    let base = s.server.base.clone();
    let (k, c) = (key.clone(), co.clone());
    let asking = std::thread::spawn(move || {
        call_at(
            &base,
            "GET",
            Some(&k),
            &format!("/companies/{c}/data/invoices"),
            None,
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !asking.is_finished(),
        "the company answered before it was taken back"
    );
    std::fs::remove_file(&paused).unwrap();
    let (status, after, _) = asking.join().unwrap();
    assert_eq!(status, 200, "{after}");
    assert_eq!(after, before);
    let status = s.server.ok(&key, &format!("/companies/{co}/dataStatus"));
    assert_eq!(status["invoices"]["snapshotId"], live.as_str());
}

/// The server's count of refused snapshots, from `/metrics`.
fn refused_total(s: &Setup) -> u64 {
    metric(&s.server, "connector_snapshots_failed_total")
}

/// Waits until the server has refused one more snapshot than `before`.
fn wait_refused(s: &Setup, before: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while refused_total(s) <= before {
        assert!(Instant::now() < deadline, "{what} was never refused");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_hostile_store_cannot_roll_a_company_back_name_files_by_path_or_publish_what_the_model_lacks() {
    let s = setup(&[]);
    let (key, co) = (&s.key, &s.company_id);
    let latest_path = s.store_dir.join(co).join("latest.json");
    let first_pointer = std::fs::read(&latest_path).unwrap();
    // A second snapshot, a customer renamed.
    s.company
        .sqlite()
        .execute(
            "UPDATE SALES_LEDGER SET NAME = NAME || ' (renamed)' WHERE ACCOUNT_REF = (SELECT min(ACCOUNT_REF) FROM SALES_LEDGER)",
            [],
        )
        .unwrap();
    let second = s.sync();
    s.server.wait_live(key, co, Some(&second));
    let still_second = |what: &str| {
        let status = s.server.ok(key, &format!("/companies/{co}/dataStatus"));
        assert_eq!(
            status["invoices"]["snapshotId"],
            second.as_str(),
            "{what}: {status}"
        );
        let customers = s
            .server
            .ok(key, &format!("/companies/{co}/data/customers?pageSize=100"));
        assert!(
            customers.to_string().contains("(renamed)"),
            "{what}: {customers}"
        );
        let invoices = s.server.ok(key, &format!("/companies/{co}/data/invoices"));
        assert_eq!(invoices["totalResults"], 7, "{what}: {invoices}");
    };

    // 1. latest.json pointed back at the first snapshot (a store rolled back, a replay).
    let before = refused_total(&s);
    std::fs::write(&latest_path, &first_pointer).unwrap();
    wait_refused(&s, before, "a pointer back to an older snapshot");
    still_second("after a pointer back to an older snapshot");

    // 2. A data file's sha256 that is a path: the cache is named by it.
    let by_path = "29991231T235959990Z-0000000a";
    plant(&s, by_path, |m| {
        m["dataTypes"]["invoices"]["files"][0]["sha256"] = json!("../../../../tmp/anything");
    });
    let detail = s.refused_detail(by_path);
    assert!(detail.contains("is not a SHA-256"), "{detail}");
    still_second("after a sha256 that is a path");

    // 3. Parquet that lacks a field of the model (status), its manifest entry consistent.
    let lacking = "29991231T235959991Z-0000000b";
    plant(&s, lacking, |m| {
        let entry = &mut m["dataTypes"]["invoices"]["files"][0];
        let original = s.store_dir.join(entry["key"].as_str().unwrap());
        let made = s.store_dir.join(format!("{lacking}.parquet"));
        duckdb::Connection::open_in_memory()
            .unwrap()
            .execute_batch(&format!(
                "COPY (SELECT * EXCLUDE (status) FROM read_parquet('{}')) TO '{}' (FORMAT parquet)",
                original.display(),
                made.display()
            ))
            .unwrap();
        put_data_file(&s, entry, &std::fs::read(&made).unwrap());
    });
    let detail = s.refused_detail(lacking);
    assert!(
        detail.contains("invoices") && detail.contains("field status is missing"),
        "{detail}"
    );
    still_second("after Parquet lacking a field");

    // 4. A data file that is not Parquet at all (its entry consistent): refused, and what the
    // client reads names neither the server's folders nor SQL.
    let garbage = "29991231T235959992Z-0000000c";
    plant(&s, garbage, |m| {
        let entry = &mut m["dataTypes"]["invoices"]["files"][0];
        put_data_file(&s, entry, b"PAR1 this is not a Parquet file PAR1");
    });
    let detail = s.refused_detail(garbage);
    assert!(detail.contains("invoices"), "{detail}");
    let state = s.server.state.display().to_string();
    assert!(
        !detail.contains(&state) && !detail.contains("SELECT") && !detail.contains("read_parquet"),
        "{detail}"
    );
    still_second("after a file that is not Parquet");
}

#[test]
fn the_servers_state_folder_and_control_database_are_readable_by_its_user_only() {
    use std::os::unix::fs::PermissionsExt;
    let s = setup(&[]);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let state = &s.server.state;
    assert_eq!(mode(state), 0o700, "{}", state.display());
    for name in ["control.sqlite3", "control.sqlite3-wal"] {
        let file = state.join(name);
        if name.ends_with("-wal") && !file.exists() {
            continue;
        }
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
}

/// Runs `connector-server admin ARGS --state-dir STATE`; returns what it printed.
fn admin(s: &Setup, args: &[&str]) -> (bool, String) {
    let out = Command::new(SERVER)
        .arg("admin")
        .args(args)
        .arg("--state-dir")
        .arg(&s.server.state)
        .output()
        .unwrap();
    (out.status.success(), text(&out))
}

#[test]
fn a_revoked_client_or_a_rotated_key_stops_working_at_once_on_a_running_server() {
    let s = setup(&[]);
    let co = &s.company_id;
    let path = format!("/companies/{co}/dataStatus");
    let client_of = |key: &str| {
        let (status, body, _) = s.server.call("GET", Some(key), "/companies", None);
        assert_eq!(status, 200, "{body}");
        body
    };
    // The key works, and the server now remembers it.
    client_of(&s.key);
    assert_eq!(s.server.get(&s.key, &path).0, 200);
    let (ok, said) = admin(&s, &["rotate-key", "cl_nosuch"]);
    assert!(!ok && said.contains("no client cl_nosuch"), "{said}");
    // The client id, from the database the operator has.
    let client_id: String = rusqlite::Connection::open(s.server.state.join("control.sqlite3"))
        .unwrap()
        .query_row("SELECT client_id FROM companies WHERE id = ?1", [co], |r| {
            r.get(0)
        })
        .unwrap();
    let (ok, said) = admin(&s, &["rotate-key", &client_id]);
    assert!(ok, "{said}");
    let new_key = said
        .lines()
        .find_map(|l| l.split(": ").nth(1).filter(|k| k.starts_with("ck_")))
        .expect("a new key is printed")
        .to_owned();
    // The very next request: the old key is refused, the new one answers for the same data.
    let (status, body) = s.server.get(&s.key, &path);
    assert_eq!(status, 401, "the rotated-out key still works: {body}");
    assert_eq!(s.server.get(&new_key, &path).0, 200);
    let (ok, said) = admin(&s, &["revoke-client", &client_id]);
    assert!(ok, "{said}");
    let (status, body) = s.server.get(&new_key, &path);
    assert_eq!(status, 401, "a revoked client's key still works: {body}");
    let (ok, said) = admin(&s, &["rotate-key", &client_id]);
    assert!(!ok, "a revoked client got a new key: {said}");
    // Another client is untouched.
    let other = s.server.client("Other Lender");
    assert_eq!(client_of(&other)["results"], json!([]));
}

#[test]
fn a_request_answering_from_a_snapshot_keeps_it_while_newer_ones_go_live() {
    let dir = tempdir();
    let paused = dir.path().join("paused");
    let s = setup_env(
        &["--query-timeout-secs", "600"],
        &[
            ("CONNECTOR_PAUSE_AT", "api-page".to_owned()),
            ("CONNECTOR_PAUSE_FILE", paused.display().to_string()),
        ],
    );
    let (key, co) = (s.key.clone(), s.company_id.clone());
    let first = latest_id(&s.store_dir, &co);
    // A page of the first snapshot, held before its queries.
    let base = s.server.base.clone();
    let (k, c, f) = (key.clone(), co.clone(), first.clone());
    let reader = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let r = reqwest::Client::new()
                .get(format!("{base}/companies/{c}/data/invoices?snapshot={f}"))
                .bearer_auth(k)
                .send()
                .await?;
            let status = r.status().as_u16();
            Ok::<_, reqwest::Error>((status, r.text().await.unwrap_or_default()))
        })
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !paused.exists() {
        assert!(
            Instant::now() < deadline,
            "the request never reached its page"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Newer snapshots go live until the first is no longer kept.
    for n in 0..3 {
        s.company
            .sqlite()
            .execute(
                &format!(
                    "UPDATE SALES_LEDGER SET NAME = 'Renamed {n}' WHERE ACCOUNT_REF = 'ALPHA01'"
                ),
                [],
            )
            .unwrap();
        let id = s.sync();
        s.server.wait_live(&key, &co, Some(&id));
    }
    let (status, body) = s.server.get(
        &key,
        &format!("/companies/{co}/data/invoices?snapshot={first}"),
    );
    assert_eq!(status, 404, "the first snapshot is still kept: {body}");
    // Let the held request go on: it answers from the snapshot it started with.
    std::fs::remove_file(&paused).unwrap();
    let (status, body) = reader.join().unwrap().unwrap();
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["totalResults"], 7, "{page}");
    assert_eq!(page["results"].as_array().unwrap().len(), 7, "{page}");
}

#[test]
fn a_client_has_quotas_of_companies_webhooks_and_url_length_and_can_delete_a_webhook() {
    let s = setup(&[
        "--allow-private-webhooks",
        "--max-companies-per-client",
        "3",
    ]);
    let key = &s.key;
    // One company exists (the golden one): two more, then the quota.
    for n in 0..2 {
        let (status, body, _) = s.server.call(
            "POST",
            Some(key),
            "/companies",
            Some(json!({"name": format!("Extra {n}")})),
        );
        assert_eq!(status, 201, "{body}");
    }
    let (status, body, _) = s.server.call(
        "POST",
        Some(key),
        "/companies",
        Some(json!({"name": "One too many"})),
    );
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("3 companies"),
        "{body}"
    );
    // Another client is not counted against it.
    let other = s.server.client("Other Lender");
    let (status, body, _) = s.server.call(
        "POST",
        Some(&other),
        "/companies",
        Some(json!({"name": "Theirs"})),
    );
    assert_eq!(status, 201, "{body}");

    let receiver = Receiver::start(vec![200]);
    let long = format!("{}?{}", receiver.url, "x".repeat(2100));
    for (hook, says) in [
        (json!({"url": long}), "the limit is 2048"),
        (
            json!({"url": receiver.url, "eventTypes": ["data.synced", "data.synced"]}),
            "named twice",
        ),
    ] {
        let (status, body, _) = s.server.call("POST", Some(key), "/webhooks", Some(hook));
        assert_eq!(status, 400, "{body}");
        assert!(body["error"].as_str().unwrap().contains(says), "{body}");
    }
    let mut ids = Vec::new();
    for _ in 0..25 {
        let (status, body, _) = s.server.call(
            "POST",
            Some(key),
            "/webhooks",
            Some(json!({"url": receiver.url})),
        );
        assert_eq!(status, 201, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let (status, body, _) = s.server.call(
        "POST",
        Some(key),
        "/webhooks",
        Some(json!({"url": receiver.url})),
    );
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("delete one first"),
        "{body}"
    );
    // Another client cannot delete it; its owner can, and then may add one again.
    let path = format!("/webhooks/{}", ids[0]);
    let (status, body, _) = s.server.call("DELETE", Some(&other), &path, None);
    assert_eq!(status, 404, "{body}");
    let (status, body, _) = s.server.call("DELETE", Some(key), &path, None);
    assert_eq!(status, 204, "{body}");
    let (status, body, _) = s.server.call("DELETE", Some(key), &path, None);
    assert_eq!(status, 404, "{body}");
    let (_, listed, _) = s.server.call("GET", Some(key), "/webhooks", None);
    assert!(!listed.to_string().contains(&ids[0]), "{listed}");
    let (status, body, _) = s.server.call(
        "POST",
        Some(key),
        "/webhooks",
        Some(json!({"url": receiver.url})),
    );
    assert_eq!(status, 201, "{body}");
}

#[test]
fn a_wake_call_ingests_only_the_company_it_names() {
    let dir = tempdir();
    let store_dir = dir.path().join("store");
    std::fs::create_dir_all(&store_dir).unwrap();
    let store = connector::publish::file_url(&store_dir);
    // No poll within the test: only wake calls make the server look at the store.
    let server = Server::start(&dir.path().join("server"), &store, &["--poll-secs", "3600"]);
    let key = server.client("Lender");
    // A is the one a sequential pass over every company (in id order) would load last: were
    // a wake to ingest every company, B would be live before A is.
    let mut ids = [
        server.company(&key, "One Ltd"),
        server.company(&key, "Two Ltd"),
    ];
    ids.sort();
    let [b, a] = ids;
    for (co, name) in [(&a, "a"), (&b, "b")] {
        let company = golden(&dir.path().join(name));
        sync_ok(
            &company.odbc,
            co,
            &dir.path().join(format!("connector-{name}")),
            Some(&store),
            &[],
        );
    }
    let (status, body, _) = server.call(
        "POST",
        Some(&key),
        &format!("/companies/{a}/snapshots/published"),
        None,
    );
    assert_eq!(status, 202, "{body}");
    server.wait_live(&key, &a, Some(&latest_id(&store_dir, &a)));
    // B's snapshot waits in the store: the wake named A only.
    let status = server.ok(&key, &format!("/companies/{b}/dataStatus"));
    assert!(
        status["invoices"]["snapshotId"].is_null(),
        "B went live on A's wake call: {status}"
    );
    let (status, body, _) = server.call(
        "POST",
        Some(&key),
        &format!("/companies/{b}/snapshots/published"),
        None,
    );
    assert_eq!(status, 202, "{body}");
    server.wait_live(&key, &b, Some(&latest_id(&store_dir, &b)));
}

#[test]
fn health_metrics_and_the_rate_limit() {
    let s = setup(&["--rate-limit", "1"]);
    let (status, body, _) = s.server.call("GET", None, "/healthz", None);
    assert_eq!((status, body), (200, Value::String("ok\n".into())));
    // Burst of 2 at 1 request/s: the third call in a row is refused with Retry-After.
    let mut refused = None;
    for _ in 0..5 {
        let (status, body, headers) = s.server.call("GET", Some(&s.key), "/companies", None);
        if status == 429 {
            refused = Some((body, headers));
            break;
        }
    }
    let (body, headers) = refused.expect("no request was rate-limited");
    assert!(headers.get("retry-after").is_some(), "{headers:?}");
    assert!(
        body["error"].as_str().unwrap().contains("retry in"),
        "{body}"
    );
    let (_, metrics, _) = s.server.call("GET", Some(METRICS_TOKEN), "/metrics", None);
    let metrics = metrics.as_str().unwrap().to_owned();
    let limited = metric(&s.server, "connector_rate_limited_total");
    assert!(limited >= 1, "{metrics}");
    assert!(
        metrics.contains("connector_snapshots_live_total 1"),
        "{metrics}"
    );
}

#[test]
fn the_openapi_document_is_generated_from_the_schemas_and_matches_what_is_served() {
    let s = setup(&[]);
    let (status, doc, _) = s.server.call("GET", None, "/openapi.json", None);
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    // What the server's keys and limits answer is documented on every route.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            for code in ["401", "408", "429"] {
                assert!(
                    operation["responses"][code].is_object(),
                    "{method} {path} does not document {code}"
                );
            }
            if path.contains("/data/") {
                assert!(operation["responses"]["503"].is_object(), "{method} {path}");
            }
        }
    }
    let model = connector::model::DataModel::embedded();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    // a nested object is a reference to its component
    let resolve = |v: &Value| -> Value {
        match v["$ref"].as_str().or(v["items"]["$ref"].as_str()) {
            Some(r) => schemas[r.trim_start_matches("#/components/schemas/")].clone(),
            None => v.clone(),
        }
    };
    for dt in &model.types {
        let schema = schemas
            .values()
            .find(|s| s["x-data-type"] == dt.name.as_str())
            .unwrap_or_else(|| panic!("no component for {}", dt.name));
        for f in &dt.fields {
            assert!(
                schema["properties"][&f.name].is_object(),
                "{}.{} missing from the OpenAPI document",
                dt.name,
                f.name
            );
        }
        let list = &doc["paths"][format!("/companies/{{companyId}}/data/{}", dt.name)]["get"];
        assert!(
            list["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "query"),
            "{}",
            dt.name
        );
        // Every key of a served record is in the document, with the documented JSON type.
        let page = s.server.ok(
            &s.key,
            &format!("/companies/{}/data/{}?pageSize=5", s.company_id, dt.name),
        );
        for record in page["results"].as_array().unwrap() {
            for (k, v) in record.as_object().unwrap() {
                let prop = &schema["properties"][k];
                assert!(
                    prop.is_object(),
                    "{}: served field {k} is not documented",
                    dt.name
                );
                let mut types: Vec<&str> = match &prop["type"] {
                    Value::String(t) => vec![t.as_str()],
                    Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                    _ => vec![],
                };
                if prop["$ref"].is_string() {
                    types.push("object");
                }
                if let Some(any) = prop["anyOf"].as_array() {
                    types.push(if any[0]["$ref"].is_string() {
                        "object"
                    } else {
                        "array"
                    });
                    types.push("null");
                }
                // the nested fields served are the component's
                if let (Value::Object(inner), Some(props)) =
                    (v, resolve(prop)["properties"].as_object())
                {
                    for k in inner.keys() {
                        assert!(
                            props.contains_key(k),
                            "{}.{k}: not in its component",
                            dt.name
                        );
                    }
                }
                let actual = match v {
                    Value::Null => "null",
                    Value::Bool(_) => "boolean",
                    Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
                    Value::Number(_) => "number",
                    Value::String(_) => "string",
                    Value::Array(_) => "array",
                    Value::Object(_) => "object",
                };
                assert!(
                    types.contains(&actual),
                    "{}.{k}: served {actual}, documented {types:?}",
                    dt.name
                );
            }
        }
    }
    // The document is public; the data is not.
    let (status, _, _) = s.server.call(
        "GET",
        None,
        &format!("/companies/{}/data/invoices", s.company_id),
        None,
    );
    assert_eq!(status, 401);
}

#[test]
fn new_snapshots_go_live_under_load_without_a_failed_or_mixed_answer() {
    let s = setup(&["--rate-limit", "100000"]);
    let (key, co) = (s.key.clone(), s.company_id.clone());
    // The name each snapshot gives ALPHA01.
    let mut names = std::collections::BTreeMap::new();
    names.insert(
        latest_id(&s.store_dir, &co),
        s.server
            .ok(&key, &format!("/companies/{co}/data/customers/ALPHA01"))["customerName"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Snapshots the load has had an answer from, as they are seen.
    let observed = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let base = s.server.base.clone();
    let load = {
        let (stop, key, co, observed) = (stop.clone(), key.clone(), co.clone(), observed.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let client = reqwest::Client::new();
                let mut tasks = Vec::new();
                for t in 0..16 {
                    let (client, stop, key, base, co, observed) = (
                        client.clone(),
                        stop.clone(),
                        key.clone(),
                        base.clone(),
                        co.clone(),
                        observed.clone(),
                    );
                    tasks.push(tokio::spawn(async move {
                        let mut seen = Vec::new();
                        let mut failures = Vec::new();
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            let path = if t % 2 == 0 {
                                format!("{base}/companies/{co}/data/customers/ALPHA01")
                            } else {
                                format!("{base}/companies/{co}/data/customers?query=id%3DALPHA01")
                            };
                            match client.get(&path).bearer_auth(&key).send().await {
                                Ok(resp) => {
                                    let status = resp.status().as_u16();
                                    let snap = resp
                                        .headers()
                                        .get("x-snapshot-id")
                                        .and_then(|v| v.to_str().ok())
                                        .map(str::to_owned);
                                    let body: Value = resp.json().await.unwrap_or(Value::Null);
                                    let record = if t % 2 == 0 {
                                        body.clone()
                                    } else {
                                        body["results"][0].clone()
                                    };
                                    match (status, snap, record["customerName"].as_str()) {
                                        (200, Some(snap), Some(name)) => {
                                            observed.lock().unwrap().insert(snap.clone());
                                            seen.push((snap, name.to_owned()))
                                        }
                                        other => failures.push(format!("{other:?} {body}")),
                                    }
                                }
                                Err(e) => failures.push(e.to_string()),
                            }
                        }
                        (seen, failures)
                    }));
                }
                let mut seen = Vec::new();
                let mut failures = Vec::new();
                for t in tasks {
                    let (s, f) = t.await.unwrap();
                    seen.extend(s);
                    failures.extend(f);
                }
                (seen, failures)
            })
        })
    };
    // Waits until the load has had an answer from `snapshot` (or fails at a deadline).
    let observed_by_load = |snapshot: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !observed.lock().unwrap().contains(snapshot) {
            assert!(
                Instant::now() < deadline,
                "the load never had an answer from {snapshot}: {:?}",
                observed.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    observed_by_load(&latest_id(&s.store_dir, &co));
    for round in 1..=3 {
        let name = format!("Alpha Round {round} Ltd");
        s.company
            .sqlite()
            .execute(
                "UPDATE SALES_LEDGER SET NAME = ?1 WHERE ACCOUNT_REF = 'ALPHA01'",
                [&name],
            )
            .unwrap();
        let id = s.sync();
        names.insert(id.clone(), name);
        s.server.wait_live(&key, &co, Some(&id));
        observed_by_load(&id);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (seen, failures) = load.join().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed answers, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(seen.len() > 100, "only {} answers under load", seen.len());
    let snapshots: std::collections::BTreeSet<&String> = seen.iter().map(|(s, _)| s).collect();
    assert_eq!(
        snapshots,
        names.keys().collect(),
        "the load did not see every snapshot"
    );
    for (snap, name) in &seen {
        assert_eq!(
            Some(name),
            names.get(snap),
            "snapshot {snap} answered with another snapshot's data"
        );
    }
}

/// A received request: lower-cased headers, the body, and the status it was answered.
pub(crate) type Received = (std::collections::BTreeMap<String, String>, String, u16);

/// A webhook receiver on loopback: records every request and answers the status the test sets.
pub(crate) struct Receiver {
    pub(crate) url: String,
    pub(crate) requests: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    /// Statuses to answer, in order; after the last, that last one again.
    pub(crate) answers: std::sync::Arc<std::sync::Mutex<Vec<u16>>>,
}

impl Receiver {
    pub(crate) fn start(answers: Vec<u16>) -> Receiver {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let answers = std::sync::Arc::new(std::sync::Mutex::new(answers));
        let (req, ans) = (requests.clone(), answers.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut stream = stream;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body) = loop {
                    let n = stream.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        break (String::new(), String::new());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if rest.len() >= len {
                            break (head.to_owned(), rest[..len].to_owned());
                        }
                    }
                };
                let headers = head
                    .lines()
                    .skip(1)
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                    .collect();
                let status = {
                    let mut a = ans.lock().unwrap();
                    if a.len() > 1 { a.remove(0) } else { a[0] }
                };
                req.lock().unwrap().push((headers, body, status));
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        Receiver {
            url,
            requests,
            answers,
        }
    }

    pub(crate) fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.requests.lock().unwrap().clone();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "only {} webhook requests arrived",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Checks a Standard Webhooks signature with Python's own hmac (not the server's code).
fn python_verifies(
    secret: &str,
    headers: &std::collections::BTreeMap<String, String>,
    body: &str,
) -> bool {
    let out = Command::new(std::env::var("CONNECTOR_TEST_PYTHON").expect("CONNECTOR_TEST_PYTHON"))
        .arg("-c")
        .arg(
            "import sys, hmac, hashlib, base64\n\
             secret, msg_id, ts, sig, body = sys.argv[1:6]\n\
             key = base64.b64decode(secret.removeprefix('whsec_'))\n\
             want = base64.b64encode(hmac.new(key, f'{msg_id}.{ts}.{body}'.encode(), hashlib.sha256).digest()).decode()\n\
             print(any(s == 'v1,' + want for s in sig.split()))",
        )
        .args([secret, &headers["webhook-id"], &headers["webhook-timestamp"], &headers["webhook-signature"], body])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "True"
}

#[test]
fn webhooks_are_signed_retried_with_the_same_id_and_survive_a_restart() {
    let mut s = setup(&[
        "--allow-private-webhooks",
        "--webhook-backoff-scale",
        "0.001",
    ]);
    let (key, co) = (s.key.clone(), s.company_id.clone());
    let receiver = Receiver::start(vec![500, 503, 200]);
    let (status, hook, _) = s.server.call(
        "POST",
        Some(&key),
        "/webhooks",
        Some(json!({"url": receiver.url, "eventTypes": ["data.synced", "company.status_changed"]})),
    );
    assert_eq!(status, 201, "{hook}");
    let secret = hook["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    // A change in Sage, a sync: one data.synced event.
    s.company
        .sqlite()
        .execute(
            "UPDATE SALES_LEDGER SET NAME = 'Hooked Ltd' WHERE ACCOUNT_REF = 'ALPHA01'",
            [],
        )
        .unwrap();
    let id = s.sync();
    s.server.wait_live(&key, &co, Some(&id));
    let got = receiver.wait_for(3);
    let ids: std::collections::BTreeSet<&String> =
        got.iter().map(|(h, _, _)| &h["webhook-id"]).collect();
    assert_eq!(ids.len(), 1, "retries must keep the webhook-id: {ids:?}");
    for (headers, body, _) in &got {
        assert!(
            python_verifies(&secret, headers, body),
            "bad signature: {headers:?}"
        );
    }
    let event: Value = serde_json::from_str(&got[2].1).unwrap();
    assert_eq!(event["type"], "data.synced");
    assert_eq!(event["data"]["snapshotId"], id.as_str());
    assert_eq!(
        event["data"]["dataTypes"]["customers"],
        json!({"added": 0, "modified": 1, "deleted": 0})
    );
    assert_eq!(
        event["data"]["dataTypes"]["accounts"],
        json!({"added": 0, "modified": 0, "deleted": 0})
    );
    // The deliveries, with their attempts, are visible to the client.
    let hook_id = hook["id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let delivery = loop {
        let list = s
            .server
            .ok(&key, &format!("/webhooks/{hook_id}/deliveries"));
        let d = list["results"][0].clone();
        if d["status"] == "delivered" {
            break d;
        }
        assert!(Instant::now() < deadline, "{list}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let codes: Vec<u64> = delivery["attemptLog"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["statusCode"].as_u64().unwrap())
        .collect();
    assert_eq!(codes, [500, 503, 200]);
    // Another client cannot see them.
    let other = s.server.client("Other");
    assert_eq!(
        s.server
            .get(&other, &format!("/webhooks/{hook_id}/deliveries"))
            .0,
        404
    );

    // The receiver goes down; an event is queued and refused; the server stops.
    *receiver.answers.lock().unwrap() = vec![500];
    s.company
        .sqlite()
        .execute(
            "UPDATE SALES_LEDGER SET NAME = 'Hooked Again Ltd' WHERE ACCOUNT_REF = 'ALPHA01'",
            [],
        )
        .unwrap();
    let id2 = s.sync();
    s.server.wait_live(&key, &co, Some(&id2));
    let msg = receiver.wait_for(4)[3].0["webhook-id"].clone();
    // The server has recorded the refusal: the delivery is pending, with an attempt logged.
    let delivery_of = |server: &Server| {
        let list = server.ok(&key, &format!("/webhooks/{hook_id}/deliveries"));
        list["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == msg.as_str())
            .unwrap_or_else(|| panic!("no delivery {msg}: {list}"))
            .clone()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = delivery_of(&s.server);
        assert_eq!(d["status"], "pending", "{d}");
        if d["attempts"].as_u64().unwrap() >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no attempt was recorded: {d}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let state = s.server.state.clone();
    let store = s.server.store.clone();
    s.server.stop();
    // The old process is reaped: nothing it did can be recorded after this moment.
    let stopped_at = chrono::Utc::now();
    s.server = Server::start(
        &state,
        &store,
        &[
            "--allow-private-webhooks",
            "--webhook-backoff-scale",
            "0.001",
        ],
    );
    // The receiver comes back only now that the new server is listening: the only process
    // that can see and record a success is the new one, and only if it took the pending
    // delivery back from the outbox.
    *receiver.answers.lock().unwrap() = vec![200];
    let deadline = Instant::now() + Duration::from_secs(60);
    let delivery = loop {
        let d = delivery_of(&s.server);
        if d["status"] == "delivered" {
            break d;
        }
        assert_eq!(d["status"], "pending", "{d}");
        assert!(
            Instant::now() < deadline,
            "the pending delivery was not delivered after the restart: {d}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let at = |a: &Value| {
        chrono::DateTime::parse_from_rfc3339(a["at"].as_str().unwrap())
            .unwrap()
            .with_timezone(&chrono::Utc)
    };
    let log = delivery["attemptLog"].as_array().unwrap();
    let (success, failures) = log.split_last().unwrap();
    assert_eq!(success["statusCode"], 200, "{delivery}");
    assert!(
        at(success) > stopped_at,
        "the success was recorded before the old server stopped ({stopped_at}): {delivery}"
    );
    assert!(
        failures
            .iter()
            .any(|a| a["statusCode"] == 500 && at(a) < stopped_at),
        "no refused attempt before the restart: {delivery}"
    );
    // What the receiver accepted: the same id, the second snapshot, signed with the secret
    // the new process read back from its state.
    let got = receiver.requests.lock().unwrap().clone();
    let accepted: Vec<&Received> = got[3..].iter().filter(|r| r.2 == 200).collect();
    assert!(
        !accepted.is_empty(),
        "the receiver accepted nothing after the restart"
    );
    for (headers, body, _) in accepted {
        assert_eq!(headers["webhook-id"], msg);
        let event: Value = serde_json::from_str(body).unwrap();
        assert_eq!(event["data"]["snapshotId"], id2.as_str(), "{event}");
        assert!(
            python_verifies(&secret, headers, body),
            "bad signature: {headers:?}"
        );
    }
}

#[test]
fn webhooks_to_private_addresses_are_refused_and_a_dead_receiver_ends_failed() {
    let s = setup(&["--webhook-backoff-scale", "0.00002"]);
    for url in [
        "http://127.0.0.1:9/hook",
        "http://169.254.169.254/latest",
        "http://10.0.0.1/x",
        "ftp://example.invalid/x",
    ] {
        let (status, body, _) =
            s.server
                .call("POST", Some(&s.key), "/webhooks", Some(json!({"url": url})));
        assert_eq!(status, 400, "{url}: {body}");
    }
    let (status, body, _) = s.server.call(
        "POST",
        Some(&s.key),
        "/webhooks",
        Some(json!({"url": "https://example.invalid/", "eventTypes": ["data.exploded"]})),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("data.exploded"),
        "{body}"
    );

    let s = setup(&[
        "--allow-private-webhooks",
        "--webhook-backoff-scale",
        "0.00002",
    ]);
    let receiver = Receiver::start(vec![500]);
    let (_, hook, _) = s.server.call(
        "POST",
        Some(&s.key),
        "/webhooks",
        Some(json!({"url": receiver.url})),
    );
    s.rename_and_sync("Dead Letter Ltd");
    let delivery = s.wait_delivery_failed(hook["id"].as_str().unwrap(), Duration::from_secs(30));
    assert_eq!(delivery["attempts"], 11, "{delivery}");
    assert!(
        delivery["lastError"].as_str().unwrap().contains("500"),
        "{delivery}"
    );
}

/// The (id, isDeleted, isArchived, totalAmount) of every record of a data type, as served.
fn served(s: &Setup, data_type: &str) -> Vec<(String, bool, bool, String)> {
    let page = s.server.ok(
        &s.key,
        &format!("/companies/{}/data/{data_type}?pageSize=5000", s.company_id),
    );
    let mut rows: Vec<_> = page["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_owned(),
                r["isDeleted"].as_bool().unwrap(),
                r["isArchived"].as_bool().unwrap(),
                r["totalAmount"].to_string(),
            )
        })
        .collect();
    rows.sort();
    rows
}

#[test]
fn a_clear_audit_trail_in_sage_reaches_the_api_as_archived_records_never_as_deletions() {
    let s = setup(&[]);
    let (invoices, payments) = (served(&s, "invoices"), served(&s, "payments"));
    assert!(invoices.iter().all(|r| !r.2), "nothing archived yet");
    // In Sage: Clear Audit Trail takes a receipt and the invoices it paid (all fully settled,
    // allocated only with each other) into the history tables, and posts an opening-balance
    // journal carrying what they posted to each nominal.
    let db = s.company.sqlite();
    let receipt: i64 = db
        .query_row(
            "SELECT p.HEADER_NUMBER FROM AUDIT_HEADER p
             WHERE p.TYPE = 'SR' AND p.DELETED_FLAG = 0
               AND NOT EXISTS (SELECT 1 FROM AUDIT_SPLIT x WHERE x.HEADER_NUMBER = p.HEADER_NUMBER
                                 AND ROUND(x.OUTSTANDING * 100) <> 0)
               -- every invoice it paid is settled and paid by nothing else
               AND NOT EXISTS (
                   SELECT 1 FROM AUDIT_USAGE u
                   JOIN AUDIT_SPLIT a ON a.SPLIT_NUMBER = u.SPLIT_NUMBER
                   JOIN AUDIT_SPLIT b ON b.SPLIT_NUMBER = u.SPLIT_CROSSREF
                   JOIN AUDIT_SPLIT other ON other.HEADER_NUMBER = b.HEADER_NUMBER
                   LEFT JOIN AUDIT_USAGE v ON v.SPLIT_CROSSREF = other.SPLIT_NUMBER
                   LEFT JOIN AUDIT_SPLIT c ON c.SPLIT_NUMBER = v.SPLIT_NUMBER
                   WHERE a.HEADER_NUMBER = p.HEADER_NUMBER
                     AND (ROUND(other.OUTSTANDING * 100) <> 0 OR c.HEADER_NUMBER <> p.HEADER_NUMBER))
               AND EXISTS (SELECT 1 FROM AUDIT_USAGE u JOIN AUDIT_SPLIT a ON a.SPLIT_NUMBER = u.SPLIT_NUMBER
                           WHERE a.HEADER_NUMBER = p.HEADER_NUMBER)
             ORDER BY p.HEADER_NUMBER LIMIT 1",
            [],
            |r| r.get(0),
        )
        .expect("the golden company has a receipt that settled its invoices");
    let paid: Vec<i64> = db
        .prepare(
            "SELECT DISTINCT b.HEADER_NUMBER FROM AUDIT_USAGE u
             JOIN AUDIT_SPLIT a ON a.SPLIT_NUMBER = u.SPLIT_NUMBER
             JOIN AUDIT_SPLIT b ON b.SPLIT_NUMBER = u.SPLIT_CROSSREF
             WHERE a.HEADER_NUMBER = ?1 ORDER BY 1",
        )
        .unwrap()
        .query_map([receipt], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let headers: Vec<String> = paid
        .iter()
        .chain([&receipt])
        .map(|h| h.to_string())
        .collect();
    let moved = format!("({})", headers.join(", "));
    db.execute_batch(&format!(
        "BEGIN;
         INSERT INTO AUDIT_HISTORY_USAGE SELECT * FROM AUDIT_USAGE
           WHERE SPLIT_NUMBER IN (SELECT SPLIT_NUMBER FROM AUDIT_SPLIT WHERE HEADER_NUMBER IN {moved});
         DELETE FROM AUDIT_USAGE
           WHERE SPLIT_NUMBER IN (SELECT SPLIT_NUMBER FROM AUDIT_SPLIT WHERE HEADER_NUMBER IN {moved});
         INSERT INTO AUDIT_HISTORY_HEADER SELECT * FROM AUDIT_HEADER WHERE HEADER_NUMBER IN {moved};
         INSERT INTO AUDIT_HISTORY_SPLIT SELECT * FROM AUDIT_SPLIT WHERE HEADER_NUMBER IN {moved};
         INSERT INTO AUDIT_HISTORY_JOURNAL SELECT * FROM AUDIT_JOURNAL WHERE HEADER_NUMBER IN {moved};
         DELETE FROM AUDIT_HEADER WHERE HEADER_NUMBER IN {moved};
         DELETE FROM AUDIT_SPLIT WHERE HEADER_NUMBER IN {moved};
         DELETE FROM AUDIT_JOURNAL WHERE HEADER_NUMBER IN {moved};
         CREATE TEMP TABLE obal AS
           SELECT (SELECT max(SPLIT_NUMBER) FROM AUDIT_SPLIT) + row_number() OVER (ORDER BY NOMINAL_CODE) AS n,
                  NOMINAL_CODE AS nominal, SUM(AMOUNT) AS amount
           FROM AUDIT_HISTORY_JOURNAL WHERE HEADER_NUMBER IN {moved}
           GROUP BY NOMINAL_CODE HAVING ROUND(SUM(AMOUNT) * 100) <> 0;
         INSERT INTO AUDIT_HEADER (HEADER_NUMBER, TRAN_NUMBER, ITEM_COUNT, TYPE, DATE, ACCOUNT_REF, INV_REF, DETAILS,
                                   NET_AMOUNT, TAX_AMOUNT, GROSS_AMOUNT, DELETED_FLAG)
           SELECT (SELECT max(HEADER_NUMBER) FROM AUDIT_HEADER) + 1, min(n), count(*), 'JD', '2025-12-31', '',
                  'O/Bal', 'Opening Balance', 0, 0, 0, 0 FROM obal;
         INSERT INTO AUDIT_SPLIT (SPLIT_NUMBER, HEADER_NUMBER, TRAN_NUMBER, TYPE, DATE, NOMINAL_CODE, DETAILS,
                                  NET_AMOUNT, TAX_AMOUNT, GROSS_AMOUNT, AMOUNT_PAID, OUTSTANDING, DELETED_FLAG)
           SELECT n, (SELECT max(HEADER_NUMBER) FROM AUDIT_HEADER), n, CASE WHEN amount > 0 THEN 'JD' ELSE 'JC' END,
                  '2025-12-31', nominal, 'Opening Balance', abs(amount), 0, abs(amount), 0, abs(amount), 0 FROM obal;
         INSERT INTO AUDIT_JOURNAL (TRAN_NUMBER, HEADER_NUMBER, SPLIT_NUMBER, TYPE, DATE, NOMINAL_CODE, AMOUNT, DELETED_FLAG)
           SELECT n, (SELECT max(HEADER_NUMBER) FROM AUDIT_HEADER), n, CASE WHEN amount > 0 THEN 'JD' ELSE 'JC' END,
                  '2025-12-31', nominal, amount, 0 FROM obal;
         COMMIT;"
    ))
    .unwrap();
    drop(db);
    let second = s.sync();
    s.server.wait_live(&s.key, &s.company_id, Some(&second));

    // Every record is still served, under its id, deleted or not as before; the moved ones
    // are archived, with the same amounts.
    for (data_type, before) in [("invoices", invoices), ("payments", payments)] {
        let after = served(&s, data_type);
        assert_eq!(after.len(), before.len(), "{data_type}: {after:?}");
        let archived: Vec<_> = after.iter().filter(|r| r.2).collect();
        assert!(
            !archived.is_empty(),
            "{data_type}: headers {headers:?} archived"
        );
        for (was, now) in before.iter().zip(&after) {
            assert_eq!(
                (&was.0, was.1, &was.3),
                (&now.0, now.1, &now.3),
                "{data_type}"
            );
            let from_header = headers
                .iter()
                .any(|h| now.0 == *h || now.0.starts_with(&format!("{h}-")));
            assert_eq!(
                now.2, from_header,
                "{data_type} {}: archived iff moved",
                now.0
            );
        }
        // and a client can ask for them
        let filtered = s.server.ok(
            &s.key,
            &format!(
                "/companies/{}/data/{data_type}?query=isArchived%3Dtrue",
                s.company_id
            ),
        );
        assert_eq!(filtered["totalResults"], archived.len(), "{filtered}");
    }
}

/// A DNS server of the test's own, on loopback UDP: answers A queries with what `answer`
/// returns for the name (lower-cased, no trailing dot) and the number of A queries for that
/// name so far (0 for the first); `None` leaves the query unanswered. AAAA and every other
/// type get an empty answer. Records have a TTL of 0.
struct TestDns {
    addr: std::net::SocketAddr,
}

impl TestDns {
    fn start(
        answer: impl Fn(&str, usize) -> Option<Vec<std::net::Ipv4Addr>> + Send + 'static,
    ) -> TestDns {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut asked: std::collections::HashMap<String, usize> = Default::default();
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                let query = &buf[..n];
                // header (12 bytes), then the question: labels up to a zero byte, type, class
                let mut at = 12;
                let mut labels = Vec::new();
                while at < n && query[at] != 0 {
                    let len = query[at] as usize;
                    labels.push(String::from_utf8_lossy(&query[at + 1..at + 1 + len]).to_string());
                    at += 1 + len;
                }
                let question_end = at + 5;
                let qtype = u16::from_be_bytes([query[at + 1], query[at + 2]]);
                let name = labels.join(".").to_ascii_lowercase();
                let ips = if qtype == 1 {
                    let seen = asked.entry(name.clone()).or_default();
                    *seen += 1;
                    match answer(&name, *seen - 1) {
                        Some(ips) => ips,
                        None => continue,
                    }
                } else {
                    Vec::new()
                };
                let mut reply = query[..2].to_vec(); // the query's id
                reply.extend_from_slice(&[0x81, 0x80, 0, 1]); // a response, no error; 1 question
                reply.extend_from_slice(&(ips.len() as u16).to_be_bytes());
                reply.extend_from_slice(&[0, 0, 0, 0]);
                reply.extend_from_slice(&query[12..question_end]);
                for ip in ips {
                    // the question's name by pointer, A, IN, TTL 0, 4 bytes of address
                    reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
                    reply.extend_from_slice(&ip.octets());
                }
                let _ = socket.send_to(&reply, from);
            }
        });
        TestDns { addr }
    }
}

#[test]
fn webhook_hosts_are_resolved_once_checked_and_connected_to_as_checked() {
    // The "internal service": a listener on loopback that must never hear from the server.
    let internal = Receiver::start(vec![200]);
    let port = internal
        .url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let dns = TestDns::start(|name, nth| match name {
        // rebinding: a public address for the first look-up, loopback after it
        "rebind.example" if nth == 0 => Some(vec![[8, 8, 8, 8].into()]),
        "rebind.example" => Some(vec![[127, 0, 0, 1].into()]),
        // one public and one private address in the same answer
        "mixed.example" => Some(vec![[8, 8, 8, 8].into(), [10, 0, 0, 1].into()]),
        "benchmarking.example" => Some(vec![[198, 18, 0, 1].into()]),
        "silent.example" => None,
        _ => Some(Vec::new()),
    });
    // The proxy variables point at the internal service too: webhooks must not use them.
    let proxy = format!("http://127.0.0.1:{port}");
    let s = setup_env(
        &[
            "--webhook-dns",
            &dns.addr.to_string(),
            "--webhook-backoff-scale",
            "0.00002",
        ],
        &[
            ("HTTP_PROXY", proxy.clone()),
            ("http_proxy", proxy.clone()),
            ("HTTPS_PROXY", proxy.clone()),
            ("ALL_PROXY", proxy),
        ],
    );
    let register = |url: &str| {
        s.server
            .call("POST", Some(&s.key), "/webhooks", Some(json!({"url": url})))
    };
    // Ranges that are not global unicast, as literals and through DNS.
    for (url, names) in [
        (format!("http://mixed.example:{port}/"), "10.0.0.1"),
        (format!("http://benchmarking.example:{port}/"), "198.18.0.1"),
        ("http://[64:ff9b::7f00:1]/".to_owned(), "64:ff9b::7f00:1"),
        ("http://[2002:7f00:1::1]/".to_owned(), "2002:7f00:1::1"),
        ("http://[::127.0.0.1]/".to_owned(), "::127.0.0.1"),
        ("http://0.0.0.1/".to_owned(), "0.0.0.1"),
        ("http://240.0.0.1/".to_owned(), "240.0.0.1"),
        ("http://224.0.0.251/".to_owned(), "224.0.0.251"),
    ] {
        let (status, body, _) = register(&url);
        assert_eq!(status, 400, "{url}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains(names) && error.contains("public"),
            "{url}: {body}"
        );
    }
    // A look-up that never ends is cut short and named.
    let started = Instant::now();
    let (status, body, _) = register("http://silent.example/");
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("silent.example"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );

    // Rebinding: the registration's look-up sees a public address, every delivery's sees
    // loopback, and the delivery is refused before any connection.
    let (status, hook, _) = register(&format!("http://rebind.example:{port}/hook"));
    assert_eq!(status, 201, "{hook}");
    s.rename_and_sync("Rebound Ltd");
    let delivery = s.wait_delivery_failed(hook["id"].as_str().unwrap(), Duration::from_secs(60));
    let error = delivery["lastError"].as_str().unwrap();
    assert!(
        error.contains("127.0.0.1") && error.contains("public"),
        "{delivery}"
    );
    assert!(
        delivery["attemptLog"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["statusCode"].is_null()),
        "{delivery}"
    );
    assert!(
        internal.requests.lock().unwrap().is_empty(),
        "the internal service was reached: {:?}",
        internal.requests.lock().unwrap()
    );
}

#[test]
fn a_query_is_bounded_in_terms_time_and_concurrency_per_key_and_in_all() {
    let dir = tempdir();
    let paused = dir.path().join("paused");
    let s = setup_env(
        &[
            "--query-timeout-secs",
            "3",
            "--max-queries",
            "1",
            "--max-queries-per-key",
            "1",
        ],
        &[
            ("CONNECTOR_PAUSE_AT", "api-page".to_owned()),
            ("CONNECTOR_PAUSE_FILE", paused.display().to_string()),
        ],
    );
    let (key, co) = (s.key.clone(), s.company_id.clone());
    // More comparisons than a query may hold: refused before any work, naming the limit.
    let terms: Vec<String> = (0..21).map(|n| format!("status~x{n}")).collect();
    let path = |n: usize| {
        format!(
            "/companies/{co}/data/invoices?query={}",
            terms[..n].join("%7C%7C")
        )
    };
    let (status, body) = s.server.get(&key, &path(21));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("20 comparisons"),
        "{body}"
    );
    // A second client with a synced company of its own.
    let other = s.server.client("Other Lender");
    let other_co = s.server.company(&other, "Other Company");
    sync_ok(
        &s.company.odbc,
        &other_co,
        &dir.path().join("other-connector"),
        Some(&s.server.store),
        &[],
    );
    s.server.wait_live(&other, &other_co, None);
    let other_path = format!("/companies/{other_co}/data/invoices");

    // The first data query (20 comparisons: allowed) is held inside its work.
    let held = {
        let (base, key, path) = (s.server.base.clone(), key.clone(), path(20));
        std::thread::spawn(move || {
            let started = Instant::now();
            let (status, body, _) = call_at(&base, "GET", Some(&key), &path, None);
            ((status, body), started.elapsed())
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !paused.exists() {
        assert!(Instant::now() < deadline, "the query never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The same key again: waits for its key's one place until its deadline, then is
    // refused and told to come back.
    let started = Instant::now();
    let (status, body, headers) = s.server.call("GET", Some(&key), &path(1), None);
    assert_eq!(status, 429, "{body}");
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    assert!(
        body["error"].as_str().unwrap().contains("queries running"),
        "{body}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    // Another client: waits for the one place in all, until its own deadline.
    let started = Instant::now();
    let (status, body, headers) = s.server.call("GET", Some(&other), &other_path, None);
    assert_eq!(status, 503, "{body}");
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    assert!(body["error"].as_str().unwrap().contains("busy"), "{body}");
    assert!(
        started.elapsed() >= Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    // The held query is answered at its deadline, stopped.
    let ((status, body), took) = held.join().unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("took longer than 3 s"),
        "{body}"
    );
    assert!(took < Duration::from_secs(6), "{took:?}");
    // Its work still holds its places until it ends: then both clients are answered.
    let (status, _, _) = s.server.call("GET", Some(&key), &path(1), None);
    assert_eq!(status, 429);
    std::fs::remove_file(&paused).unwrap();
    let answered = |key: &str, path: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, body) = s.server.get(key, path);
            if status == 200 {
                return body;
            }
            assert!(Instant::now() < deadline, "{status} {body}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert_eq!(answered(&other, &other_path)["totalResults"], 7);
    let page = answered(&key, &path(20));
    assert_eq!(page["totalResults"], 0, "{page}");
}

#[test]
fn webhook_deliveries_are_paged_newest_first_and_kept_for_the_retention_period() {
    let flags = [
        "--allow-private-webhooks",
        "--delivery-retention-days",
        "30",
    ];
    let mut s = setup(&flags);
    let receiver = Receiver::start(vec![200]);
    let hook = s.subscribe(&receiver.url);
    let hook_id = hook["id"].as_str().unwrap().to_owned();
    // A long history, as the server writes it: a delivery an hour for 1,050 hours (about 44
    // days), each delivered after one attempt; and one still pending, 50 days old.
    let now = chrono::Utc::now();
    let stamp =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut made = Vec::new();
    {
        let mut db = rusqlite::Connection::open(s.server.state.join("control.sqlite3")).unwrap();
        db.busy_timeout(Duration::from_secs(10)).unwrap();
        let tx = db.transaction().unwrap();
        for i in 0..1051 {
            let (id, created, status) = if i < 1050 {
                (
                    format!("msg_history{i:05}"),
                    now - chrono::Duration::hours(i) - chrono::Duration::minutes(1),
                    "delivered",
                )
            } else {
                (
                    "msg_stillpending".to_owned(),
                    now - chrono::Duration::days(50),
                    "pending",
                )
            };
            tx.execute(
                "INSERT INTO deliveries (id, webhook_id, event_type, payload, status, attempts, next_attempt_at, created_at, delivered_at)
                 VALUES (?1, ?2, 'data.synced', '{}', ?3, 1, ?4, ?5, ?5)",
                rusqlite::params![id, hook_id, status, i64::MAX / 2, stamp(created)],
            )
            .unwrap();
            tx.execute(
                "INSERT INTO attempts (delivery_id, at, status_code) VALUES (?1, ?2, 200)",
                rusqlite::params![id, stamp(created)],
            )
            .unwrap();
            made.push((stamp(created), id));
        }
        tx.commit().unwrap();
    }
    // Newest first, ties by id, as the route promises.
    made.sort_by(|a, b| b.cmp(a));
    let everything = |s: &Setup| {
        let mut seen: Vec<(String, String)> = Vec::new();
        let mut path = format!("/webhooks/{hook_id}/deliveries?pageSize=100");
        loop {
            let page = s.server.ok(&s.key, &path);
            let results = page["results"].as_array().unwrap();
            assert!(results.len() <= 100, "{path}");
            for d in results {
                assert_eq!(d["attemptLog"].as_array().unwrap().len(), 1, "{d}");
                seen.push((
                    d["createdAt"].as_str().unwrap().to_owned(),
                    d["id"].as_str().unwrap().to_owned(),
                ));
            }
            match page["_links"]["next"]["href"].as_str() {
                Some(next) => path = next.to_owned(),
                None => return seen,
            }
        }
    };
    assert_eq!(everything(&s), made);
    for bad in ["0", "1001", "x"] {
        let (status, body) = s.server.get(
            &s.key,
            &format!("/webhooks/{hook_id}/deliveries?pageSize={bad}"),
        );
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("pageSize"),
            "{body}"
        );
    }
    // After a restart (the worker deletes at start, then hourly): what is older than 30 days
    // and no longer pending is gone, with its attempts; the rest is still there.
    s.server.stop();
    let state = s.server.state.clone();
    let store = s.server.store.clone();
    s.server = Server::start(&state, &store, &flags);
    let cutoff = stamp(now - chrono::Duration::days(30));
    let kept: Vec<(String, String)> = made
        .iter()
        .filter(|(created, id)| *created >= cutoff || id == "msg_stillpending")
        .cloned()
        .collect();
    assert!(
        kept.len() < made.len() && kept.len() > 700,
        "{}",
        kept.len()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = everything(&s);
        if seen == kept {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} kept, {} expected",
            seen.len(),
            kept.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let db = rusqlite::Connection::open(state.join("control.sqlite3")).unwrap();
    let attempts: i64 = db
        .query_row("SELECT count(*) FROM attempts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(attempts as usize, kept.len());
}

#[test]
fn a_receiver_that_never_answers_does_not_hold_up_another_clients_events() {
    let s = setup(&["--allow-private-webhooks"]);
    // Client A's receiver accepts connections and never answers (each try waits out the
    // server's 10 s timeout).
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole_url = format!("http://{}/hook", hole.local_addr().unwrap());
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let held = held.clone();
        std::thread::spawn(move || {
            for stream in hole.incoming().flatten() {
                held.lock().unwrap().push(stream);
            }
        });
    }
    let register = |key: &str, url: &str| {
        let (status, hook, _) =
            s.server
                .call("POST", Some(key), "/webhooks", Some(json!({"url": url})));
        assert_eq!(status, 201, "{hook}");
        hook["id"].as_str().unwrap().to_owned()
    };
    let slow_hook = register(&s.key, &hole_url);
    let other = s.server.client("Other Lender");
    let receiver = Receiver::start(vec![200]);
    let fast_hook = register(&other, &receiver.url);
    let queue = |hook: &str, ids: std::ops::Range<usize>| {
        let mut db = rusqlite::Connection::open(s.server.state.join("control.sqlite3")).unwrap();
        db.busy_timeout(Duration::from_secs(10)).unwrap();
        let tx = db.transaction().unwrap();
        for i in ids {
            tx.execute(
                "INSERT INTO deliveries (id, webhook_id, event_type, payload, status, next_attempt_at, created_at)
                 VALUES (?1, ?2, 'data.synced', '{}', 'pending', 0, ?3)",
                rusqlite::params![
                    format!("msg_queued{i:04}"),
                    hook,
                    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                ],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    };
    // A backlog of 40 events for the silent receiver, all due, older than the other's event.
    queue(&slow_hook, 0..40);
    let deadline = Instant::now() + Duration::from_secs(10);
    while held.lock().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the silent receiver was never tried"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    queue(&fast_hook, 40..41);
    let started = Instant::now();
    let got = receiver.wait_for(1);
    assert_eq!(got[0].0["webhook-id"], "msg_queued0040");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the other client's event waited {:?}",
        started.elapsed()
    );
    // The silent receiver has at most its share of connections open at once.
    let open = held.lock().unwrap().len();
    assert!(
        (1..=4).contains(&open),
        "{open} connections to the silent receiver"
    );
}

/// A raw connection to the server at `base` (`http://host:port`).
fn raw_connection(base: &str) -> std::net::TcpStream {
    let addr = base.trim_start_matches("http://");
    let stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

/// Reads until the server closes the connection (or 20 s pass); returns what it sent.
fn read_to_close(stream: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the server kept the connection open: {e}"),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn slow_and_idle_clients_are_cut_off_and_cannot_take_the_server_down() {
    use std::io::Write;
    let s = setup(&[
        "--header-timeout-secs",
        "1",
        "--max-connections",
        "20",
        "--request-timeout-secs",
        "2",
    ]);
    // 40 clients sending a request head a byte at a time, never finishing it: more than
    // the server serves at once.
    let slow: Vec<_> = (0..40)
        .map(|_| {
            let mut stream = raw_connection(&s.server.base);
            std::thread::spawn(move || {
                let started = Instant::now();
                let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ");
                while started.elapsed() < Duration::from_secs(30) {
                    if stream.write_all(b"x").is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                started.elapsed()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // Meanwhile a real client is answered.
    let started = Instant::now();
    let page = s.server.ok(&s.key, "/companies");
    assert!(page["results"].is_array(), "{page}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // Every slow client was cut off, long before it stopped trying by itself.
    for t in slow {
        let lasted = t.join().unwrap();
        assert!(
            lasted < Duration::from_secs(15),
            "a slow client lasted {lasted:?}"
        );
    }
    // A kept-alive connection left idle is closed after the header timeout.
    let mut idle = raw_connection(&s.server.base);
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    let answer = read_to_close(&mut idle);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // A body sent too slowly: the request is answered 408, in the JSON error shape.
    let mut trickle = raw_connection(&s.server.base);
    write!(
        trickle,
        "POST /companies HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{",
        s.key
    )
    .unwrap();
    let writer = {
        let mut trickle = trickle.try_clone().unwrap();
        std::thread::spawn(move || {
            for _ in 0..60 {
                if trickle.write_all(b" ").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    let answer = read_to_close(&mut trickle);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"status\":408"), "{answer}");
    writer.join().unwrap();
}

#[test]
fn requests_without_a_valid_key_are_rate_limited_per_address_and_metrics_need_their_token() {
    let s = setup(&["--unauthenticated-rate-limit", "5"]);
    // The client's key is known before the flood.
    s.server.ok(&s.key, "/companies");
    let mut refused = None;
    let mut left = Vec::new();
    for n in 0..40 {
        let (status, body, headers) =
            s.server
                .call("GET", Some(&format!("ck_wrong{n}")), "/companies", None);
        assert!(status == 401 || status == 429, "{status} {body}");
        if status == 401 {
            // each wrong key is told what is left of its address's bucket
            assert_eq!(headers["ratelimit-policy"], "\"per-address\";q=10;w=2");
            left.push(
                headers["x-ratelimit-remaining"]
                    .to_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        if status == 429 {
            refused = Some((body, headers));
            break;
        }
    }
    let (body, headers) = refused.expect("wrong keys were never rate-limited");
    assert!(left.len() >= 9, "{left:?}");
    assert_eq!(left[..3], ["9", "8", "7"], "{left:?}");
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("too many wrong API keys or device credentials"),
        "{body}"
    );
    // Wrong device credentials on the connector's routes spend the same look-up bucket;
    // requests with no key at all have a bucket of their own (spent by nothing above).
    let (status, _, _) = s.server.call("GET", None, "/openapi.json", None);
    assert_eq!(status, 200);
    let checkin = format!("/companies/{}/connector/checkin", s.company_id);
    // (a token the bucket got back meanwhile, on a loaded machine, is spent by the first
    // try; a bucket of their own would let ten through)
    let statuses: Vec<u16> = (0..3)
        .map(|_| {
            s.server
                .call("POST", Some("dv_wrong"), &checkin, Some(json!({})))
                .0
        })
        .collect();
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    // A valid key is not held back by its address.
    s.server.ok(&s.key, "/companies");

    // /metrics: never with an API client's key; with the server's metrics token.
    let (status, body, _) = s.server.call("GET", Some(&s.key), "/metrics", None);
    assert_eq!(status, 401, "{body}");
    let (status, body, _) = s.server.call("GET", Some(METRICS_TOKEN), "/metrics", None);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.as_str()
            .unwrap()
            .contains("connector_rate_limited_total"),
        "{body}"
    );
    // no data query is running now: the gauge is back at zero after every request
    assert!(
        body.as_str()
            .unwrap()
            .contains("\nconnector_queries_running 0\n"),
        "{body}"
    );
    // A server started without a token has no /metrics.
    let dir = tempdir();
    let bare = Server::start_env(
        &dir.path().join("server"),
        &s.server.store,
        &[],
        &[("CONNECTOR_METRICS_TOKEN", String::new())],
    );
    let (status, body, _) = bare.call("GET", Some(METRICS_TOKEN), "/metrics", None);
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("CONNECTOR_METRICS_TOKEN"),
        "{body}"
    );
}

#[test]
fn webhook_secrets_are_sealed_at_rest_and_survive_a_key_rotation_on_a_running_server() {
    let mut s = setup(&["--allow-private-webhooks"]);
    let receiver = Receiver::start(vec![200]);
    let hook = s.subscribe(&receiver.url);
    let secret = hook["secret"].as_str().unwrap().to_owned();
    let hook_id = hook["id"].as_str().unwrap().to_owned();
    let db_path = s.server.state.join("control.sqlite3");
    let stored = || -> String {
        rusqlite::Connection::open(&db_path)
            .unwrap()
            .query_row(
                "SELECT secret FROM webhooks WHERE id = ?1",
                [&hook_id],
                |r| r.get(0),
            )
            .unwrap()
    };
    // Nothing of the secret is in the database, nor anywhere in its files.
    let key_part = secret.trim_start_matches("whsec_");
    let first = stored();
    assert!(first.starts_with("sealed:v1:"), "{first}");
    for entry in std::fs::read_dir(&s.server.state).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !String::from_utf8_lossy(&bytes).contains(key_part),
                "the secret is in clear in {}",
                path.display()
            );
        }
    }
    let key_file = s.server.state.join("secrets.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Rotation by the operator while the server runs: sealed again under a new key, and the
    // running server still signs with the same secret.
    let (ok, said) = admin(&s, &["rotate-secrets-key"]);
    assert!(ok, "{said}");
    let second = stored();
    assert!(
        second.starts_with("sealed:v1:") && second != first,
        "{second}"
    );
    let key_id = |sealed: &str| sealed.split(':').nth(2).unwrap().to_owned();
    assert_ne!(key_id(&first), key_id(&second));
    let signed_with_secret = |s: &Setup, name: &str, n: usize| {
        s.rename_and_sync(name);
        let got = receiver.wait_for(n);
        let (headers, body, _) = &got[n - 1];
        assert!(
            python_verifies(&secret, headers, body),
            "not signed with the subscription's secret: {headers:?}"
        );
    };
    signed_with_secret(&s, "Rotated Ltd", 1);
    // A secret stored in clear by an older version is sealed when the server starts.
    rusqlite::Connection::open(&db_path)
        .unwrap()
        .execute(
            "UPDATE webhooks SET secret = ?2 WHERE id = ?1",
            [&hook_id, &secret],
        )
        .unwrap();
    s.server.stop();
    let (state, store) = (s.server.state.clone(), s.server.store.clone());
    s.server = Server::start(&state, &store, &["--allow-private-webhooks"]);
    let third = stored();
    assert!(third.starts_with("sealed:v1:"), "{third}");
    assert_eq!(key_id(&third), key_id(&second));
    signed_with_secret(&s, "Restarted Ltd", 2);
    // Without its key, the server says which file to mend rather than signing with junk.
    std::fs::write(&key_file, "not a key\n").unwrap();
    let (ok, said) = admin(&s, &["create-client", "Another"]);
    assert!(!ok);
    assert!(
        said.contains("secrets.key") && said.contains("line 1"),
        "{said}"
    );
}

#[test]
fn a_manifest_cannot_reach_another_companys_files_through_the_store_or_the_cache() {
    let dir = tempdir();
    let s = setup(&[]);
    let (key, co) = (&s.key, &s.company_id);
    // Another client's company, whose first customer has a name only it has.
    let other = s.server.client("Other Lender");
    let other_co = s.server.company(&other, "Other Company");
    s.company
        .sqlite()
        .execute(
            "UPDATE SALES_LEDGER SET NAME = 'Known Only To B Ltd' WHERE ACCOUNT_REF = (SELECT min(ACCOUNT_REF) FROM SALES_LEDGER)",
            [],
        )
        .unwrap();
    sync_ok(
        &s.company.odbc,
        &other_co,
        &dir.path().join("other-connector"),
        Some(&s.server.store),
        &[],
    );
    s.server.wait_live(&other, &other_co, None);
    let b_latest: Value = serde_json::from_slice(
        &std::fs::read(s.store_dir.join(&other_co).join("latest.json")).unwrap(),
    )
    .unwrap();
    let b_manifest: Value = serde_json::from_slice(
        &std::fs::read(s.store_dir.join(b_latest["manifestKey"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let b_customers = b_manifest["dataTypes"]["customers"].clone();
    let b_file = b_customers["files"][0].clone();
    let b_sha = b_file["sha256"].as_str().unwrap().to_owned();
    let mine = |what: &str| {
        let customers = s
            .server
            .ok(key, &format!("/companies/{co}/data/customers?pageSize=100"));
        assert!(
            !customers.to_string().contains("Known Only To B"),
            "{what}: {customers}"
        );
    };
    // 1. B's file, by B's key: a key outside the company's own prefix is refused.
    let theirs = "29991231T235959980Z-000000b1";
    plant(&s, theirs, |m| {
        m["dataTypes"]["customers"] = b_customers.clone()
    });
    let detail = s.refused_detail(theirs);
    assert!(detail.contains("customers"), "{detail}");
    mine("after a manifest naming another company's key");
    // 2. B's hash under this company's own key, where no such file is: the server's copy of
    // B's file (B's cache) is never used for this company.
    let cached = "29991231T235959981Z-000000b2";
    plant(&s, cached, |m| {
        m["dataTypes"]["customers"]["controlTotals"] = b_customers["controlTotals"].clone();
        m["dataTypes"]["customers"]["rows"] = b_customers["rows"].clone();
        let entry = &mut m["dataTypes"]["customers"]["files"][0];
        entry["sha256"] = json!(b_sha);
        entry["bytes"] = b_file["bytes"].clone();
        entry["key"] = json!(format!("{co}/data/customers/{b_sha}.parquet"));
        entry["rows"] = b_file["rows"].clone();
    });
    let detail = s.refused_detail(cached);
    assert!(detail.contains("customers"), "{detail}");
    mine("after a manifest naming another company's file by its hash");
    // 3. A file larger than its manifest entry says: refused by its size.
    let big = "29991231T235959982Z-000000b3";
    plant(&s, big, |m| {
        let bytes = vec![b'x'; 4096];
        let sha = sha256_hex(&bytes);
        let file_key = format!("{co}/data/customers/{sha}.parquet");
        let file = s.store_dir.join(&file_key);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, &bytes).unwrap();
        let entry = &mut m["dataTypes"]["customers"]["files"][0];
        entry["key"] = json!(file_key);
        entry["sha256"] = json!(sha);
        entry["bytes"] = json!(100);
    });
    let detail = s.refused_detail(big);
    assert!(detail.contains("bytes, the manifest says"), "{detail}");
    mine("after a file of the wrong size");
}

#[test]
fn a_deleted_record_is_served_as_deleted_for_the_days_the_server_keeps_it_then_no_more() {
    let s = setup(&["--keep-deleted-days", "0"]);
    let (key, co) = (s.key.clone(), s.company_id.clone());
    let db = s.company.sqlite();
    let item: String = db
        .query_row(
            "SELECT STOCK_CODE FROM STOCK ORDER BY STOCK_CODE LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    db.execute("DELETE FROM STOCK WHERE STOCK_CODE = ?1", [&item])
        .unwrap();
    drop(db);
    let second = s.sync();
    s.server.wait_live(&key, &co, Some(&second));
    let path = format!("/companies/{co}/data/items/{item}");
    let gone = s.server.ok(&key, &path);
    assert_eq!(gone["isDeleted"], true, "{gone}");
    // The next snapshot comes after the (zero) days it is kept: it is no longer served.
    s.rename_and_sync("Later Ltd");
    let (status, body) = s.server.get(&key, &path);
    assert_eq!(status, 404, "{body}");
    // Records Sage itself marks deleted are the source's, not carried: still served.
    let deleted = s.server.ok(
        &key,
        &format!("/companies/{co}/data/invoices?query=isDeleted%3Dtrue"),
    );
    assert_eq!(deleted["totalResults"], 1, "{deleted}");
}

/// A gauge or counter of the server's `/metrics`.
fn metric(server: &Server, name: &str) -> u64 {
    let (_, body, _) = server.call("GET", Some(METRICS_TOKEN), "/metrics", None);
    body.as_str()
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics: {body}"))
}

#[test]
fn a_memory_budget_keeps_the_companies_last_used_in_memory_and_takes_the_others_back_on_demand() {
    // A budget that one company's data fits in, not two (each is the golden company:
    // its database's own overhead, 3 MB, and its tables).
    let mut s = setup(&["--memory-limit", "4MB", "--poll-secs", "0.1"]);
    let key = s.key.clone();
    let mut companies = vec![s.company_id.clone()];
    for (n, name) in ["Second Ltd", "Third Ltd"].iter().enumerate() {
        let co = s.server.company(&key, name);
        sync_ok(
            &s.company.odbc,
            &co,
            &s.connector_state.with_extension(n.to_string()),
            Some(&s.server.store),
            &[],
        );
        s.server.wait_live(&key, &co, None);
        companies.push(co);
    }
    let page = |co: &str| {
        s.server.ok(
            &key,
            &format!("/companies/{co}/data/invoices?orderBy=id&pageSize=100"),
        )
    };
    // the budget is kept beside the request that took a company back: soon after it
    let one_in_memory = |when: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while metric(&s.server, "connector_companies_in_memory") != 1 {
            assert!(
                Instant::now() < deadline,
                "{when}: not one company in memory"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let first: Vec<Value> = companies.iter().map(|co| page(co)).collect();
    one_in_memory("after the first pages");
    // Round and round: each answer the same as when it was in memory, modifiedDate
    // included (taken back from its saved state, not loaded anew), one company in memory
    // after each; the polls between do not bring the others back.
    for round in 0..3 {
        for (co, before) in companies.iter().zip(&first) {
            assert_eq!(&page(co), before, "round {round}, company {co}");
            one_in_memory(&format!("round {round}, company {co}"));
        }
    }
    // the polls between requests (every 0.1 s) take nothing back
    let taken_back = metric(&s.server, "connector_companies_taken_back_total");
    assert!(taken_back >= 9, "{taken_back} take-backs in 3 rounds of 3");
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        metric(&s.server, "connector_companies_taken_back_total"),
        taken_back
    );
    assert_eq!(metric(&s.server, "connector_companies_in_memory"), 1);
    // A new snapshot of a company out of memory goes live (taken back, then the new one
    // built on it: modifiedDate moves only for the record that changed).
    let before = page(&companies[0]);
    page(&companies[1]);
    one_in_memory("before the new snapshot");
    let renamed = s.rename_and_sync("Budget Ltd");
    let after = s.server.ok(
        &key,
        &format!("/companies/{}/data/customers/ALPHA01", companies[0]),
    );
    assert_eq!(after["customerName"], "Budget Ltd");
    // invoices of other customers keep their modifiedDate (built on the state taken back)
    let others = |page: Value| -> Vec<Value> {
        page["results"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["customerRef"]["id"] != "ALPHA01")
            .cloned()
            .collect()
    };
    let unchanged = others(before);
    assert!(!unchanged.is_empty());
    assert_eq!(others(page(&companies[0])), unchanged);
    assert_eq!(
        s.server
            .ok(&key, &format!("/companies/{}/dataStatus", companies[0]))["invoices"]["snapshotId"],
        renamed.as_str()
    );
    s.server.stop();
}

/// A company past one block of ids, then a snapshot that edits a few recent transactions and
/// deletes a stock item: the server loads only the parts whose files changed (the others are
/// the snapshot before's, shared), and serves the whole company as before: every record
/// once, `modifiedDate` moved on the edited records only, the deleted item kept as deleted,
/// the same after a restart and in the next snapshot.
#[test]
fn a_snapshot_changing_a_few_parts_is_loaded_part_by_part_and_served_whole() {
    let dir = tempdir();
    let store_dir = dir.path().join("store");
    std::fs::create_dir_all(&store_dir).unwrap();
    let store = connector::publish::file_url(&store_dir);
    let mut server = Server::start(&dir.path().join("server"), &store, &[]);
    let key = server.client("Lender");
    let co = server.company(&key, "Parts Ltd");
    let company = crate::support::generated(&dir.path().join("company"), 29, 24_000);
    let state = dir.path().join("connector");
    let sync = |server: &Server| {
        sync_ok(&company.odbc, &co, &state, Some(&server.store), &[]);
        let id = latest_id(&store_dir, &co);
        server.wait_live(&key, &co, Some(&id));
        id
    };
    let first = sync(&server);
    let manifest = |id: &str| -> Value {
        serde_json::from_slice(
            &std::fs::read(store_dir.join(format!("{co}/snapshots/{id}/manifest.json"))).unwrap(),
        )
        .unwrap()
    };
    let files = crate::snapshot::files_by_part;
    let (loaded, reused) = (
        metric(&server, "connector_parts_loaded_total"),
        metric(&server, "connector_parts_reused_total"),
    );
    let first_files = files(&manifest(&first));
    assert_eq!((loaded, reused), (first_files.len() as u64, 0));
    let db = company.sqlite();
    let (oldest, newest): (i64, i64) = db
        .query_row(
            "SELECT min(HEADER_NUMBER), max(HEADER_NUMBER) FROM AUDIT_HEADER WHERE TYPE = 'SI'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let invoice =
        |server: &Server, id: i64| server.ok(&key, &format!("/companies/{co}/data/invoices/{id}"));
    let (old_before, new_before) = (invoice(&server, oldest), invoice(&server, newest));
    // The same request to the same snapshot is answered with the answer already given.
    let repeated = metric(&server, "connector_answers_repeated_total");
    assert_eq!(invoice(&server, oldest), old_before);
    assert_eq!(
        metric(&server, "connector_answers_repeated_total"),
        repeated + 1
    );
    let count = |server: &Server| {
        server.ok(&key, &format!("/companies/{co}/data/invoices?pageSize=1"))["totalResults"]
            .clone()
    };
    let invoices = count(&server);
    let walk = |server: &Server| -> Vec<Value> {
        let mut all = Vec::new();
        let mut page = 1;
        loop {
            let p = server.ok(
                &key,
                &format!("/companies/{co}/data/invoices?pageSize=1000&page={page}&orderBy=id"),
            );
            let rows = p["results"].as_array().unwrap().clone();
            if rows.is_empty() {
                break all;
            }
            all.extend(rows);
            page += 1;
        }
    };
    let all_before = walk(&server);
    db.execute_batch(
        "CREATE TEMP TABLE edited AS SELECT HEADER_NUMBER FROM AUDIT_HEADER WHERE TYPE = 'SI' ORDER BY HEADER_NUMBER DESC LIMIT 20;
         UPDATE AUDIT_HEADER SET DETAILS = substr(DETAILS || ' (edited)', 1, 60) WHERE HEADER_NUMBER IN (SELECT HEADER_NUMBER FROM edited);
         UPDATE AUDIT_SPLIT SET DETAILS = substr(DETAILS || ' (edited)', 1, 60) WHERE HEADER_NUMBER IN (SELECT HEADER_NUMBER FROM edited);",
    )
    .unwrap();
    let item: String = db
        .query_row(
            "SELECT STOCK_CODE FROM STOCK ORDER BY STOCK_CODE LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    db.execute("DELETE FROM STOCK WHERE STOCK_CODE = ?1", [&item])
        .unwrap();
    drop(db);
    let second = sync(&server);
    let second_files = files(&manifest(&second));
    let changed = second_files
        .iter()
        .filter(|(k, sha)| first_files.get(*k) != Some(*sha))
        .count() as u64;
    assert!(
        (2..first_files.len() as u64 / 2).contains(&changed),
        "{changed} of {} files changed",
        first_files.len()
    );
    // Only the changed parts were loaded from their files.
    assert_eq!(
        metric(&server, "connector_parts_loaded_total"),
        loaded + changed
    );
    assert_eq!(
        metric(&server, "connector_parts_reused_total"),
        second_files.len() as u64 - changed
    );
    // And the company is served whole.
    assert_eq!(count(&server), invoices);
    let (old_after, new_after) = (invoice(&server, oldest), invoice(&server, newest));
    assert_eq!(old_after, old_before, "an invoice of an unchanged part");
    assert_ne!(
        new_after["modifiedDate"], new_before["modifiedDate"],
        "{new_after}"
    );
    let gone = server.ok(&key, &format!("/companies/{co}/data/items/{item}"));
    assert_eq!(gone["isDeleted"], true, "{gone}");
    let all = walk(&server);
    let ids: std::collections::BTreeSet<&str> =
        all.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), all.len(), "an invoice served twice");
    assert_eq!(Some(all.len() as u64), invoices.as_u64());
    // modifiedDate moved on exactly the invoices whose content changed (the twenty edited,
    // and those whose lines name the deleted item)
    let content = |r: &Value| {
        let mut r = r.clone();
        r.as_object_mut().unwrap().remove("modifiedDate");
        r
    };
    let mut moved = 0;
    for (was, now) in all_before.iter().zip(&all) {
        assert_eq!(was["id"], now["id"]);
        let changed = content(was) != content(now);
        assert_eq!(now["modifiedDate"] != was["modifiedDate"], changed, "{now}");
        moved += usize::from(changed);
    }
    assert!(moved >= 20, "{moved} invoices changed");
    // A restart serves the same, and the next snapshot builds on what it took back.
    let server_state = server.state.clone();
    server.stop();
    server = Server::start(&server_state, &store, &[]);
    assert_eq!(walk(&server), all, "after a restart");
    assert_eq!(
        server.ok(&key, &format!("/companies/{co}/data/items/{item}")),
        gone
    );
    let third = sync(&server);
    assert_ne!(third, second);
    assert_eq!(
        walk(&server),
        all,
        "in the next snapshot, nothing changed in Sage"
    );
    assert_eq!(
        server.ok(&key, &format!("/companies/{co}/data/items/{item}")),
        gone
    );
}

/// Every byte of `text` but ASCII letters and digits, percent-encoded.
fn encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b.is_ascii_alphanumeric() {
            true => (b as char).to_string(),
            false => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn pages_and_records_answered_from_memory_are_the_ones_duckdb_answers() {
    let mut s = setup(&["--rate-limit", "100000"]);
    let (key, co) = (s.key.clone(), s.company_id.clone());
    let status = s.server.ok(&key, &format!("/companies/{co}/dataStatus"));
    let types: Vec<String> = status.as_object().unwrap().keys().cloned().collect();
    assert!(types.len() > 10, "{status}");
    // Each data type's rows are read into memory on its first request (DuckDB answers until
    // then): rounds of a new page of each until every one was answered from memory.
    let from_memory = |s: &Setup| metric(&s.server, "connector_answers_from_memory_total");
    let deadline = Instant::now() + Duration::from_secs(60);
    for round in 1.. {
        let before = from_memory(&s);
        for t in &types {
            s.server.ok(
                &key,
                &format!("/companies/{co}/data/{t}?pageSize=1&page={round}"),
            );
        }
        if from_memory(&s) - before == types.len() as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rows never all came into memory"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(metric(&s.server, "connector_rows_in_memory_bytes") > 0);

    // Requests none of the above asked: pages in every ordering, filters, every record by id.
    let mut paths = Vec::new();
    for t in &types {
        for order in [
            "",
            "&orderBy=-modifiedDate",
            "&orderBy=-id",
            "&orderBy=modifiedDate",
        ] {
            for page in 1..=2 {
                paths.push(format!(
                    "/companies/{co}/data/{t}?pageSize=3&page={page}{order}"
                ));
            }
        }
        let all = s
            .server
            .ok(&key, &format!("/companies/{co}/data/{t}?pageSize=5000"));
        for record in all["results"].as_array().unwrap() {
            let id = record["id"].as_str().unwrap();
            paths.push(format!("/companies/{co}/data/{t}/{}", encoded(id)));
        }
        paths.push(format!("/companies/{co}/data/{t}/no-such-record"));
    }
    for query in [
        "status=Paid",
        "status!=Paid",
        "{issueDate>=2025-05-01&&issueDate<2025-06-01}||id=\"16\"",
        "issueDate>=2025-03-01&&issueDate<2025-07-01&&status!=Draft",
        "totalAmount>300&&isDeleted=false",
        "totalAmount<=100.5",
        "customerRef.id=ALPHA01||customerRef.id=MUNOZ01",
        "customerRef.id>M",
        "id~si-2025",
        "isDeleted=true",
        "dueDate<2025-06-01||dueDate>=2025-09-01",
        "modifiedDate>=2020-01-01T00:00:00Z",
    ] {
        for order in [
            "",
            "-issueDate",
            "issueDate",
            "-totalAmount",
            "customerRef.id",
            "-dueDate",
        ] {
            let order = match order {
                "" => String::new(),
                o => format!("&orderBy={}", encoded(o)),
            };
            for page in 1..=2 {
                paths.push(format!(
                    "/companies/{co}/data/invoices?query={}&pageSize=2&page={page}{order}",
                    encoded(query)
                ));
            }
        }
    }
    let answers = |s: &Setup| -> Vec<(u16, Value)> {
        paths
            .iter()
            .map(|p| {
                let (status, body, _) = s.server.call("GET", Some(&key), p, None);
                assert!(status == 200 || status == 404, "{p}: {status} {body}");
                (status, body)
            })
            .collect()
    };
    let before = from_memory(&s);
    let in_memory = answers(&s);
    let answered = from_memory(&s) - before;
    // (only a `~` on non-ASCII text is left to DuckDB, and the golden company has little)
    assert!(
        answered * 10 >= paths.len() as u64 * 9,
        "{answered} of {} answered from memory",
        paths.len()
    );
    assert!(in_memory.iter().any(|(status, _)| *status == 404));

    // The same server with no rows in memory: DuckDB answers every one, the same.
    let (state, store) = (s.server.state.clone(), s.server.store.clone());
    s.server.stop();
    s.server = Server::start(
        &state,
        &store,
        &["--served-memory", "0", "--rate-limit", "100000"],
    );
    s.server.wait_live(&key, &co, None);
    let from_duckdb = answers(&s);
    assert_eq!(
        from_memory(&s),
        0,
        "answered from memory with --served-memory 0"
    );
    for ((path, a), b) in paths.iter().zip(&in_memory).zip(&from_duckdb) {
        assert_eq!(a, b, "{path}: from memory, then from DuckDB");
    }
}
