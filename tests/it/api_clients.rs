//! The API as client developers meet it: the OpenAPI document through a validator, two
//! client generators and a fuzzer (all from their public registries, installed by the
//! Makefile), a generated client driven against a real server, consistent paging,
//! compression and caching headers, and the reference page in Chromium.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::server::{Setup, setup};
use crate::support::tempdir;

const SERVER: &str = env!("CARGO_BIN_EXE_connector-server");

/// A program of the test virtualenv (next to its python).
fn venv_tool(name: &str) -> PathBuf {
    let python = std::env::var("CONNECTOR_TEST_PYTHON")
        .expect("CONNECTOR_TEST_PYTHON names the test virtualenv's python (make test sets it)");
    Path::new(&python).with_file_name(name)
}

/// A program the Makefile installed from npm.
fn npm_tool(name: &str) -> PathBuf {
    let dir = std::env::var("CONNECTOR_TEST_NODE_MODULES").unwrap_or_else(|_| {
        format!(
            "{}/.cache/connector/npm/node_modules",
            std::env::var("HOME").unwrap()
        )
    });
    Path::new(&dir).join(".bin").join(name)
}

/// Runs a command; its exit status and everything it printed.
fn run(command: &mut Command) -> (bool, String) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The document, as `connector-server openapi` prints it, written to `dir`.
fn document(dir: &Path) -> PathBuf {
    let (ok, text) = run(Command::new(SERVER).arg("openapi"));
    assert!(ok, "{text}");
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let path = dir.join("openapi.json");
    std::fs::write(&path, text).unwrap();
    path
}

/// Generates the Python client into `dir`; its package `connector_api_client`, and what the
/// generator printed.
fn generate_python_client(doc: &Path, dir: &Path) -> (PathBuf, String) {
    let config = dir.join("generator.yml");
    // (its default post-hooks run ruff, which an API client's machine may not have)
    std::fs::write(&config, "post_hooks: []\n").unwrap();
    let out = dir.join("python-client").join("connector_api_client");
    let (ok, text) = run(Command::new(venv_tool("openapi-python-client"))
        .args(["generate", "--meta", "none", "--path"])
        .arg(doc)
        .arg("--config")
        .arg(&config)
        .arg("--output-path")
        .arg(&out));
    assert!(ok, "openapi-python-client failed: {text}");
    (out, text)
}

#[test]
fn the_document_passes_a_validator_and_both_generators_without_a_warning() {
    let dir = tempdir();
    let doc = document(dir.path());

    let (ok, text) = run(Command::new(venv_tool("openapi-spec-validator")).arg(&doc));
    assert!(ok && text.contains("OK"), "openapi-spec-validator: {text}");

    let (client, text) = generate_python_client(&doc, dir.path());
    for bad in ["Warning", "warning", "Error", "Unable to", "Skipping"] {
        assert!(
            !text.contains(bad),
            "openapi-python-client said {bad:?}: {text}"
        );
    }
    // One model per record, singular; shared nested objects once; no collision of the API's
    // company with the `company` data type.
    let models = client.join("models");
    for model in [
        "invoice.py",
        "invoice_page.py",
        "journal_entry.py",
        "customer_ref.py",
        "account_ref.py",
        "tax_rate_ref.py",
        "line_item.py",
        "lineage.py",
        "links.py",
        "company.py",
        "company_record.py",
        "data_status.py",
        "delivery_page.py",
        "data_synced_event.py",
        "sync_failed_event.py",
        "company_status_changed_event.py",
    ] {
        assert!(models.join(model).is_file(), "no model {model}");
    }
    let files: Vec<String> = std::fs::read_dir(&models)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for f in &files {
        assert!(
            !f.starts_with("invoices_") && !f.ends_with("_customer_ref.py"),
            "a per-type copy of a model: {f} (of {files:?})"
        );
    }

    // TypeScript: openapi-typescript, then the TypeScript compiler on what it wrote.
    let types = dir.path().join("api.d.ts");
    let (ok, text) = run(Command::new(npm_tool("openapi-typescript"))
        .arg(&doc)
        .arg("-o")
        .arg(&types));
    assert!(ok, "openapi-typescript: {text}");
    assert!(
        !text.to_lowercase().contains("warn") && !text.to_lowercase().contains("error"),
        "openapi-typescript: {text}"
    );
    let ts = std::fs::read_to_string(&types).unwrap();
    for name in [
        "Invoice: {",
        "CustomerRef: {",
        "webhooks: {",
        "DataSyncedEvent: {",
    ] {
        assert!(ts.contains(name), "no {name} in the TypeScript types");
    }
    let (ok, text) = run(Command::new(npm_tool("tsc"))
        .args(["--noEmit", "--strict"])
        .arg(&types));
    assert!(ok, "tsc on the generated types: {text}");
}

#[test]
fn a_generated_python_client_works_end_to_end_with_every_answer_typed() {
    // (the webhook's target is this machine: no DNS is needed)
    let s = setup(&["--allow-private-webhooks"]);
    let dir = tempdir();
    let doc = document(dir.path());
    let (client, _) = generate_python_client(&doc, dir.path());
    let python = std::env::var("CONNECTOR_TEST_PYTHON").unwrap();
    let (ok, text) = run(Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/python_client_e2e.py"))
        .args([
            &s.server.base,
            &s.key,
            &s.company_id,
            "http://127.0.0.1:9/connector-events",
        ])
        .env("PYTHONPATH", client.parent().unwrap()));
    assert!(ok, "the generated client's walk failed: {text}");
    assert!(text.contains("every answer typed"), "{text}");
}

/// Runs schemathesis, all of its checks, against the served document as `key`; its output.
fn schemathesis(s: &Setup, key: &str, env: &[(&str, String)], seed: u64) -> (bool, String) {
    let report = tempdir();
    let mut command = Command::new(venv_tool("schemathesis"));
    command
        .arg("--no-color")
        .arg("--config-file")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/schemathesis.toml"))
        .arg("run")
        .arg(format!("{}/openapi.json", s.server.base))
        .args(["--checks", "all", "--max-examples", "20", "--workers", "1"])
        .arg(format!("--seed={seed}"))
        .arg("--header")
        .arg(format!("Authorization: Bearer {key}"))
        .args(["--request-timeout", "30"])
        .arg("--report-dir")
        .arg(report.path())
        .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
        .env(
            "PYTHONPATH",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients"),
        )
        .current_dir(report.path());
    for (k, v) in env {
        command.env(k, v);
    }
    run(&mut command)
}

#[test]
fn schemathesis_with_two_clients_keys_finds_no_5xx_no_undocumented_answer_and_no_cross_client_data()
{
    let s = setup(&[
        "--rate-limit",
        "100000",
        "--unauthenticated-rate-limit",
        "100000",
        "--allow-private-webhooks",
    ]);
    // Client B: a company and a webhook of its own, with names only B's data holds.
    let a = (s.key.clone(), s.company_id.clone(), "Golden Café Ltd");
    let b_key = s.server.client("Other lender");
    let b_company = s.server.company(&b_key, "Zebra Other Client Ltd");
    let b = (b_key, b_company, "Zebra Other Client Ltd");
    let hook = |key: &str, url: &str| {
        let (status, hook, _) =
            s.server
                .call("POST", Some(key), "/webhooks", Some(json!({ "url": url })));
        assert_eq!(status, 201, "{hook}");
        hook["id"].as_str().unwrap().to_owned()
    };
    // Each client in turn drives the run, the other's ids among its path parameters.
    for (round, (me, other)) in [(&a, &b), (&b, &a)].into_iter().enumerate() {
        let (me_hook, other_hook) = (
            hook(&me.0, &format!("http://127.0.0.1:9/{}-hook", me.1)),
            hook(&other.0, &format!("http://127.0.0.1:9/{}-hook", other.1)),
        );
        let env = [
            ("ST_OWN_COMPANY", me.1.clone()),
            ("ST_OWN_WEBHOOK", me_hook),
            ("ST_OTHER_COMPANY", other.1.clone()),
            ("ST_OTHER_WEBHOOK", other_hook.clone()),
            (
                "ST_OTHER_MARKERS",
                format!(
                    "{}|{}-hook|\"{}\"|\"{other_hook}\"",
                    other.2, other.1, other.1
                ),
            ),
        ];
        let (ok, text) = schemathesis(&s, &me.0, &env, round as u64 + 1);
        std::fs::write(
            std::env::temp_dir().join(format!("connector-schemathesis-{round}.log")),
            &text,
        )
        .unwrap();
        assert!(ok, "schemathesis as {} found failures:\n{text}", me.2);
        assert!(
            text.contains("passed") && !text.contains("Runtime Error"),
            "{text}"
        );
        // and the other client's company is still there, its own
        let (status, body) = s.server.get(&other.0, &format!("/companies/{}", other.1));
        assert_eq!(status, 200, "{body}");
    }
}

/// Adds `n` customers to the setup's Sage source, copies of ALPHA01 under new account refs
/// starting with `prefix`.
fn add_customers(s: &Setup, prefix: &str, n: usize) {
    let db = s.company.sqlite();
    db.execute_batch(
        "DROP TABLE IF EXISTS temp.copy; CREATE TEMP TABLE copy AS SELECT * FROM SALES_LEDGER WHERE ACCOUNT_REF = 'ALPHA01';",
    )
    .unwrap();
    for i in 0..n {
        db.execute(
            "UPDATE temp.copy SET ACCOUNT_REF = ?1, NAME = ?2",
            [
                format!("{prefix}{i:04}"),
                format!("Customer {prefix}{i:04}"),
            ],
        )
        .unwrap();
        db.execute("INSERT INTO SALES_LEDGER SELECT * FROM temp.copy", [])
            .unwrap();
    }
}

/// Adds `n` customers (see [`add_customers`]), syncs, and waits until that snapshot is live.
fn sync_with_customers(s: &Setup, prefix: &str, n: usize) -> String {
    add_customers(s, prefix, n);
    let id = s.sync();
    s.server.wait_live(&s.key, &s.company_id, Some(&id));
    id
}

/// The record ids of a page, in order.
fn page_ids(page: &Value) -> Vec<String> {
    page["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Walks `path` by its `next` links from the first page; every record's id and the snapshot
/// each page came from. `between` runs after the first page.
fn walk(s: &Setup, path: &str, between: impl FnOnce()) -> (Vec<String>, Vec<String>) {
    let mut between = Some(between);
    let (mut ids, mut snapshots) = (Vec::new(), Vec::new());
    let mut next = Some(path.to_owned());
    while let Some(href) = next {
        let (status, page, headers) = s.server.call("GET", Some(&s.key), &href, None);
        assert_eq!(status, 200, "{href}: {page}");
        snapshots.push(headers["x-snapshot-id"].to_str().unwrap().to_owned());
        ids.extend(page_ids(&page));
        next = page["_links"]["next"]["href"].as_str().map(str::to_owned);
        if let Some(f) = between.take() {
            f();
        }
    }
    (ids, snapshots)
}

#[test]
fn a_walk_through_the_pages_is_one_snapshot_while_a_new_one_goes_live() {
    let s = setup(&[]);
    let first = sync_with_customers(&s, "M", 300);
    let co = &s.company_id;
    let expected = page_ids(&s.server.ok(
        &s.key,
        &format!("/companies/{co}/data/customers?pageSize=5000&snapshot={first}"),
    ));
    assert!(expected.len() > 300, "{}", expected.len());
    // Between pages 1 and 2: customers that sort before every page are added, one on page 1
    // is removed, and that snapshot goes live. Read from the live snapshot, page 2 would
    // repeat ids of page 1.
    let (ids, snapshots) = walk(
        &s,
        &format!("/companies/{co}/data/customers?pageSize=40"),
        || {
            add_customers(&s, "A", 25);
            s.company
                .sqlite()
                .execute("DELETE FROM SALES_LEDGER WHERE ACCOUNT_REF = 'M0003'", [])
                .unwrap();
            let second = s.sync();
            s.server.wait_live(&s.key, &s.company_id, Some(&second));
        },
    );
    let live = s.server.ok(&s.key, &format!("/companies/{co}/dataStatus"));
    assert_ne!(
        live["customers"]["snapshotId"], first,
        "no new snapshot went live"
    );
    assert!(
        snapshots.iter().all(|id| *id == first),
        "pages came from several snapshots: {snapshots:?}"
    );
    let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "an id was seen twice");
    assert_eq!(
        ids, expected,
        "the walk is not the first snapshot's customers"
    );
}

#[test]
fn answers_are_compressed_on_request_and_cached_by_etag_until_a_new_snapshot() {
    let s = setup(&[]);
    let co = &s.company_id;
    let url = format!(
        "{}/companies/{co}/data/invoices?pageSize=100",
        s.server.base
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // (a client without automatic decompression: the bytes on the wire are what it reads)
    let client = reqwest::Client::new();
    let get = |encoding: Option<&str>, if_none_match: Option<&str>| {
        rt.block_on(async {
            let mut req = client.get(&url).bearer_auth(&s.key);
            if let Some(e) = encoding {
                req = req.header("accept-encoding", e);
            }
            if let Some(t) = if_none_match {
                req = req.header("if-none-match", t);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            (status, headers, resp.bytes().await.unwrap().to_vec())
        })
    };
    let (status, plain_headers, plain) = get(None, None);
    assert_eq!(status, 200);
    assert!(plain_headers.get("content-encoding").is_none());
    let page: Value = serde_json::from_slice(&plain).unwrap();
    for (encoding, magic) in [
        ("gzip", &[0x1f, 0x8b][..]),
        ("zstd", &[0x28, 0xb5, 0x2f, 0xfd][..]),
        ("br", &[][..]),
    ] {
        let (status, headers, body) = get(Some(encoding), None);
        assert_eq!(status, 200);
        assert_eq!(headers["content-encoding"], encoding);
        assert!(
            headers["vary"]
                .to_str()
                .unwrap()
                .to_lowercase()
                .contains("accept-encoding")
        );
        assert!(body.starts_with(magic), "{encoding}");
        assert!(
            body.len() * 3 < plain.len(),
            "{encoding}: {} bytes of {}",
            body.len(),
            plain.len()
        );
    }
    let decoded = {
        use std::io::Read;
        let (_, _, gz) = get(Some("gzip"), None);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut out)
            .unwrap();
        out
    };
    assert_eq!(serde_json::from_slice::<Value>(&decoded).unwrap(), page);

    // ETag: the same request answers the same tag; If-None-Match gets 304 with no body.
    let etag = plain_headers["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with("W/\""), "{etag}");
    assert_eq!(plain_headers["cache-control"], "private, no-cache");
    let (status, headers, body) = get(None, Some(&etag));
    assert_eq!(status, 304);
    assert!(body.is_empty());
    assert_eq!(headers["etag"], etag.as_str());
    let (status, _, _) = get(None, Some("W/\"someone-else\", \"x\""));
    assert_eq!(status, 200);
    // Another request, or the same one after a new snapshot, is another tag.
    let other = s.server.call(
        "GET",
        Some(&s.key),
        &format!("/companies/{co}/data/invoices?pageSize=99"),
        None,
    );
    assert_ne!(other.2["etag"], etag.as_str());
    let next = s.rename_and_sync("Alpha Renamed Ltd");
    let (status, headers, _) = get(None, Some(&etag));
    assert_eq!(status, 200, "a new snapshot is new content");
    assert_eq!(headers["x-snapshot-id"], next.as_str());
    // A named snapshot's answer can be kept; answers that are not data are not stored.
    let (_, _, named) = s.server.call(
        "GET",
        Some(&s.key),
        &format!("/companies/{co}/data/invoices?snapshot={next}"),
        None,
    );
    assert_eq!(named["cache-control"], "private, max-age=3600");
    let (_, _, companies) = s.server.call("GET", Some(&s.key), "/companies", None);
    assert_eq!(companies["cache-control"], "no-store");
}

#[test]
fn every_answer_carries_its_rate_limit_per_key_or_per_address() {
    let dir = tempdir();
    let store = connector::publish::file_url(&dir.path().join("store"));
    // 2 requests a second, bursts of 4
    let server =
        crate::server::Server::start(&dir.path().join("server"), &store, &["--rate-limit", "2"]);
    let key = server.client("Lender");
    let headers = |_: usize| server.call("GET", Some(&key), "/companies", None);
    let answers: Vec<_> = (0..5).map(headers).collect();
    let remaining: Vec<&str> = answers
        .iter()
        .map(|(_, _, h)| h["x-ratelimit-remaining"].to_str().unwrap())
        .collect();
    // each request takes one; the refill over a few milliseconds is less than one
    assert_eq!(remaining, ["3", "2", "1", "0", "0"], "{answers:?}");
    let (status, body, last) = &answers[4];
    assert_eq!(*status, 429, "{body}");
    assert!(last.contains_key("retry-after"));
    let (_, _, first) = &answers[0];
    assert_eq!(first["x-ratelimit-limit"], "4");
    assert_eq!(first["x-ratelimit-reset"], "1");
    assert_eq!(first["ratelimit-policy"], "\"per-key\";q=4;w=2");
    assert_eq!(first["ratelimit"], "\"per-key\";r=3;t=1");
    // an answer without a key tells what is left of its address's bucket (50 a second)
    let (status, _, anonymous) = server.call("GET", None, "/openapi.json", None);
    assert_eq!(status, 200);
    assert_eq!(anonymous["x-ratelimit-limit"], "100");
    assert_eq!(anonymous["ratelimit-policy"], "\"per-address\";q=100;w=2");
}

#[test]
fn the_reference_page_renders_the_document_in_chromium_without_a_console_error() {
    let s = setup(&[]);
    let browser = crate::webdriver::Browser::start();
    browser.goto(&format!("{}/docs", s.server.base));
    browser.wait_until(
        "Redoc rendered the API",
        std::time::Duration::from_secs(60),
        |b| b.source().contains("List invoices"),
    );
    let text = browser.find("body").text();
    for shown in [
        "Connector API",
        "List invoices",
        "List journalEntries",
        "Subscribe to events",
        "data.synced",
        "sync.failed",
        "company.status_changed",
    ] {
        assert!(text.contains(shown), "the page does not show {shown:?}");
    }
    // Nothing was loaded from another host: every resource the page fetched is ours.
    let loaded = browser.execute(
        "return performance.getEntriesByType('resource').map(e => e.name)",
        vec![],
    );
    let loaded = loaded.as_array().unwrap();
    assert!(
        loaded
            .iter()
            .any(|u| u.as_str().unwrap().ends_with("/openapi.json")),
        "{loaded:?}"
    );
    for url in loaded {
        let url = url.as_str().unwrap();
        assert!(
            url.starts_with(&s.server.base) || url.starts_with("data:"),
            "loaded from elsewhere: {url}"
        );
    }
    let errors: Vec<Value> = browser
        .console_log()
        .into_iter()
        .filter(|e| e["level"] == "SEVERE")
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");
}

#[test]
fn pages_read_from_where_the_last_one_ended_are_the_pages_an_offset_gives() {
    let s = setup(&[]);
    sync_with_customers(&s, "K", 120);
    let co = &s.company_id;
    // Orderings on text, dates with NULLs, money, a nested field, descending ones; with and
    // without a filter. Walking by next links (each page begins where the last ended) gives
    // exactly one page holding everything; jumping to a page no walk reached gives the rows
    // an offset gives.
    for (data_type, order, query) in [
        ("customers", None, None),
        ("customers", Some("-id"), None),
        ("customers", Some("customerName"), Some("isDeleted=false")),
        ("customers", Some("-balance"), None),
        ("invoices", Some("dueDate"), None),
        ("invoices", Some("-dueDate"), None),
        ("invoices", Some("-totalAmount"), Some("totalAmount>0")),
        ("invoices", Some("customerRef.id"), None),
        ("invoices", Some("-modifiedDate"), None),
        ("customers", Some("-customerName"), Some("customerName~k")),
    ] {
        let mut path = format!("/companies/{co}/data/{data_type}?");
        if let Some(o) = order {
            path.push_str(&format!("orderBy={}&", o.replace('+', "%2B")));
        }
        if let Some(q) = query {
            path.push_str(&format!(
                "query={}&",
                q.replace('&', "%26")
                    .replace('=', "%3D")
                    .replace('>', "%3E")
                    .replace('!', "%21")
            ));
        }
        let all = page_ids(&s.server.ok(&s.key, &format!("{path}pageSize=5000")));
        assert!(all.len() > 6, "{path}: {}", all.len());
        let (walked, _) = walk(&s, &format!("{path}pageSize=3"), || {});
        assert_eq!(walked, all, "{path}: walked by next links");
        let jumped = page_ids(&s.server.ok(&s.key, &format!("{path}pageSize=2&page=3")));
        assert_eq!(jumped, all[4..6], "{path}: page 3 by offset");
    }
}

#[test]
fn the_readme_quickstart_works_when_pasted() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme.find("### Quickstart").expect("a quickstart")..];
    let section = &section[..section.find("### How the pieces fit").unwrap()];
    let blocks: Vec<&str> = section
        .split("```sh\n")
        .skip(1)
        .map(|b| &b[..b.find("```").unwrap()])
        .collect();
    assert_eq!(blocks.len(), 2, "the quickstart and the generated client");
    let venv = venv_tool("python");
    let script = format!(
        "set -e\ntrap 'kill $(jobs -p) 2>/dev/null' EXIT\n{}\n{}",
        blocks[0], blocks[1]
    );
    let (ok, out) = run(Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env(
            "PATH",
            format!(
                "{}:{}",
                venv.parent().unwrap().display(),
                std::env::var("PATH").unwrap()
            ),
        )
        .env(
            "CARGO_TARGET_DIR",
            Path::new(SERVER).parent().unwrap().parent().unwrap(),
        ));
    assert!(ok, "{out}");
    // the first page of invoices, then the generated client's walk through all of them
    assert!(out.contains("\"results\":[{"), "{out}");
    let walked: u64 = out
        .lines()
        .find(|l| l.contains(" invoices, all from snapshot"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(walked > 100, "{out}");
}
