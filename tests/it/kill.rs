//! SIGKILL during a sync, at named points of every stage and at moments spread over a sync, against
//! both stores (a local folder and the S3 server process). After each kill: the previously
//! published snapshot is still `latest` and whole (unless the kill came after the pointer
//! moved, when the new one is, whole). After the rerun: the new snapshot is latest and whole,
//! its data equal to what a clean sync of the same Sage data publishes, no abandoned upload
//! remains, the outbox is empty, and every data file in the store belongs to a manifest.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::snapshot::walk;
use crate::support::{CONNECTOR, Company, S3, generated, sync, sync_ok, tempdir, text, verify};

/// Where a kill lands: the failpoint name (see `src/failpoint.rs`), `:N` for its N-th hit.
const POINTS: &[&str] = &[
    "extract-table:3",
    "rule-file:4",
    "normalised",
    "export-first-file",
    "snapshot-before-rename",
    "upload:1",
    "upload:2",
    "upload-part:1",
    "manifest-before",
    "manifest-after",
    "pointer-before",
    "pointer-after",
];

/// One store under test.
struct Target {
    url: String,
    env: Vec<(&'static str, String)>,
    /// The local folder, for the local store.
    local: Option<PathBuf>,
    /// The bucket and the S3 server, for S3.
    s3: Option<(S3, String)>,
}

impl Target {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        match (&self.local, &self.s3) {
            (Some(dir), _) => std::fs::read(dir.join(key)).ok(),
            (_, Some((s3, bucket))) => {
                let (status, body) = s3.http("GET", &format!("/{bucket}/k/{key}"));
                // a missing key is None; any other answer is the S3 server failing the test
                assert!(
                    status == 200 || status == 404,
                    "GET {key}: S3 answered {status}: {body}"
                );
                (status == 200).then(|| body.split_once("\r\n\r\n").unwrap().1.as_bytes().to_vec())
            }
            _ => unreachable!(),
        }
    }

    fn latest(&self) -> Option<Value> {
        self.get("acme/latest.json")
            .map(|b| serde_json::from_slice(&b).unwrap())
    }

    /// Every key under the company.
    fn keys(&self) -> Vec<String> {
        match (&self.local, &self.s3) {
            (Some(dir), _) => walk(&dir.join("acme"))
                .into_iter()
                .map(|p| p.strip_prefix(dir).unwrap().to_string_lossy().into_owned())
                .collect(),
            (_, Some((s3, bucket))) => {
                let (status, body) = s3.http(
                    "GET",
                    &format!("/{bucket}?list-type=2&prefix=k/acme/&max-keys=1000"),
                );
                // an error must not read as an empty (clean) store
                assert_eq!(status, 200, "listing the store failed: {body}");
                assert!(body.contains("<ListBucketResult"), "not a listing: {body}");
                assert!(
                    !body.contains("<IsTruncated>true"),
                    "more keys than one listing"
                );
                body.split("<Key>")
                    .skip(1)
                    .map(|s| {
                        s.split("</Key>")
                            .next()
                            .unwrap()
                            .trim_start_matches("k/")
                            .to_owned()
                    })
                    .collect()
            }
            _ => unreachable!(),
        }
    }

    fn verify_latest(&self, context: &str) -> String {
        let out = verify(&self.url, "acme", &[], &self.env);
        assert!(
            out.status.success(),
            "{context}: latest is not whole: {}",
            text(&out)
        );
        self.latest().unwrap()["snapshotId"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// After a completed sync: nothing half-done anywhere.
    fn assert_clean(&self, state: &Path, context: &str) {
        let keys = self.keys();
        if let Some((s3, bucket)) = &self.s3 {
            assert_eq!(
                s3.open_uploads(bucket),
                0,
                "{context}: a multipart upload was left open"
            );
        }
        assert!(
            !keys.iter().any(|k| k.contains('#')),
            "{context}: half-written files remain: {keys:?}"
        );
        let outbox = state.join("companies/acme/outbox");
        let left: Vec<_> = std::fs::read_dir(&outbox)
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name())
            .collect();
        assert!(
            left.is_empty(),
            "{context}: the outbox still holds {left:?}"
        );
        // Every data file belongs to some manifest in the store.
        let mut referenced = std::collections::BTreeSet::new();
        for key in keys.iter().filter(|k| k.ends_with("manifest.json")) {
            let m: Value = serde_json::from_slice(&self.get(key).unwrap()).unwrap();
            for entry in m["dataTypes"].as_object().unwrap().values() {
                for file in entry["files"].as_array().unwrap() {
                    referenced.insert(file["key"].as_str().unwrap().to_owned());
                }
            }
        }
        for key in keys.iter().filter(|k| k.contains("/data/")) {
            assert!(
                referenced.contains(key),
                "{context}: {key} belongs to no manifest"
            );
        }
    }
}

/// The data part of a manifest: per data type and part, (sha256, rows).
fn data_of(manifest: &Value) -> Vec<(String, String, i64)> {
    manifest["dataTypes"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(k, e)| {
            e["files"].as_array().unwrap().iter().map(move |f| {
                (
                    format!("{k}/{}", f["part"].as_str().unwrap()),
                    f["sha256"].as_str().unwrap().to_owned(),
                    f["rows"].as_i64().unwrap(),
                )
            })
        })
        .collect()
}

fn latest_manifest(target: &Target) -> Value {
    let latest = target.latest().unwrap();
    serde_json::from_slice(&target.get(latest["manifestKey"].as_str().unwrap()).unwrap()).unwrap()
}

/// Changes customers, invoices and the journal in Sage, so a sync has several files to upload.
fn edit(company: &Company, n: usize) {
    let db = company.sqlite();
    db.execute(
        "UPDATE SALES_LEDGER SET NAME = ?1 WHERE ACCOUNT_REF = (SELECT MIN(ACCOUNT_REF) FROM SALES_LEDGER)",
        [format!("Customer renamed {n}")],
    )
    .unwrap();
    let h: i64 = db
        .query_row(
            "SELECT MIN(HEADER_NUMBER) FROM AUDIT_HEADER WHERE TYPE = 'SI' AND DELETED_FLAG = 0",
            [],
            |r| r.get(0),
        )
        .unwrap();
    db.execute(
        "UPDATE AUDIT_SPLIT SET DETAILS = ?1 WHERE HEADER_NUMBER = ?2",
        (format!("edit {n}"), h),
    )
    .unwrap();
}

/// A clean sync of the company as it is now into a fresh local store: what should be published.
fn reference(company: &Company, dir: &Path) -> Vec<(String, String, i64)> {
    let state = tempfile::tempdir_in(dir).unwrap();
    sync_ok(&company.odbc, "acme", state.path(), None, &[]);
    let store = state.path().join("store");
    let latest: Value =
        serde_json::from_slice(&std::fs::read(store.join("acme/latest.json")).unwrap()).unwrap();
    let m: Value = serde_json::from_slice(
        &std::fs::read(store.join(latest["manifestKey"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    data_of(&m)
}

fn run_kills(target: Target, dir: &Path) {
    let company = generated(&dir.join("company"), 21, 600);
    let state = dir.join("state");
    let extra: &[&str] = &["--multipart-above", "0"];
    let out = sync(
        &company.odbc,
        "acme",
        &state,
        Some(&target.url),
        extra,
        &target.env,
    );
    assert!(out.status.success(), "{}", text(&out));
    let mut previous = target.verify_latest("first sync");
    for (n, point) in POINTS.iter().enumerate() {
        edit(&company, n);
        let mut env = target.env.clone();
        env.push((connector::failpoint::ENV, point.to_string()));
        let out = sync(
            &company.odbc,
            "acme",
            &state,
            Some(&target.url),
            extra,
            &env,
        );
        assert_eq!(
            out.status.signal(),
            Some(9),
            "{point}: the sync was not killed there: {}",
            text(&out)
        );
        let now = target.verify_latest(&format!("after a kill at {point}"));
        if *point == "pointer-after" {
            assert!(now > previous, "{point}: latest did not move");
        } else {
            assert_eq!(
                now, previous,
                "{point}: latest moved to an unfinished snapshot"
            );
        }
        if *point == "upload-part:1" {
            // Mid-upload: an open multipart upload on S3, a half-written `#N` file locally.
            let left = match &target.s3 {
                Some((s3, bucket)) => s3.open_uploads(bucket),
                None => target.keys().iter().filter(|k| k.contains('#')).count(),
            };
            assert!(
                left > 0,
                "the kill at {point} left nothing half-done to clean up"
            );
        }
        let out = sync(
            &company.odbc,
            "acme",
            &state,
            Some(&target.url),
            extra,
            &target.env,
        );
        assert!(
            out.status.success(),
            "{point}: the rerun failed: {}",
            text(&out)
        );
        let after = target.verify_latest(&format!("rerun after {point}"));
        assert!(
            after > now,
            "{point}: the rerun did not publish a newer snapshot"
        );
        target.assert_clean(&state, &format!("rerun after {point}"));
        assert_eq!(
            data_of(&latest_manifest(&target)),
            reference(&company, dir),
            "{point}: the recovered snapshot differs from a clean sync of the same data"
        );
        previous = after;
    }
}

/// Kills syncs at six moments spread over a whole sync, found by what the sync itself says:
/// a clean sync of the same company prints N debug lines of the connector's own (tables
/// extracted, rules and checks run, files exported, the publication); the k-th killed sync
/// is killed as it prints line k·(N-2)/6. Each kill must land mid-sync (the process dies by the signal, not by finishing).
fn run_spread_kills(target: Target, dir: &Path) {
    let company = generated(&dir.join("company"), 22, 600);
    let state = dir.join("state");
    // the connector's own debug lines: every table, rule, check, file and upload
    let mut env = target.env.clone();
    env.push(("RUST_LOG", "connector=debug".to_owned()));
    let out = sync(&company.odbc, "acme", &state, Some(&target.url), &[], &env);
    assert!(out.status.success(), "{}", text(&out));
    let lines = String::from_utf8_lossy(&out.stderr).lines().count();
    assert!(
        lines >= 14,
        "a sync says too little to spread kills over: {}",
        text(&out)
    );
    let mut previous = target.verify_latest("first sync");
    let mut stages = Vec::new();
    for n in 1..=6 {
        edit(&company, 100 + n);
        let mut child = Command::new(CONNECTOR)
            .args([
                "sync",
                "--odbc",
                &company.odbc,
                "--company",
                "acme",
                "--store",
                &target.url,
                "--state-dir",
            ])
            .arg(&state)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // up to two lines before the end, so that the sync is still running when killed
        let at = (lines - 2) * n / 6;
        let mut said =
            std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
        let mut last = String::new();
        for _ in 0..at {
            last = said
                .next()
                .unwrap_or_else(|| panic!("the sync ended before log line {at}: it said {last}"))
                .unwrap();
        }
        child.kill().unwrap(); // SIGKILL, while it waits to print the next line
        let status = child.wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "kill {n} at log line {at} of {lines} did not land mid-sync (after: {last})"
        );
        stages.push(last);
        let now = target.verify_latest(&format!("after a kill at log line {at}"));
        assert!(now >= previous, "latest went backwards");
        previous = now;
    }
    let out = sync(
        &company.odbc,
        "acme",
        &state,
        Some(&target.url),
        &[],
        &target.env,
    );
    assert!(
        out.status.success(),
        "the rerun failed after kills after {stages:?}: {}",
        text(&out)
    );
    eprintln!("the kills landed after these log lines of {lines}: {stages:#?}");
    let after = target.verify_latest("rerun after the kills");
    assert!(after > previous);
    target.assert_clean(&state, "rerun after the kills");
    assert_eq!(data_of(&latest_manifest(&target)), reference(&company, dir));
}

fn local(dir: &Path) -> Target {
    let store = dir.join("store");
    Target {
        url: connector::publish::file_url(&store),
        env: Vec::new(),
        local: Some(store),
        s3: None,
    }
}

fn s3(hint: &str) -> Target {
    let s3 = S3::from_env();
    let bucket = s3.bucket(hint);
    Target {
        url: format!("s3://{bucket}/k"),
        env: s3.env(),
        local: None,
        s3: Some((s3, bucket)),
    }
}

#[test]
fn kill_at_every_point_then_rerun_local_store() {
    let dir = tempdir();
    run_kills(local(dir.path()), dir.path());
}

#[test]
fn kill_at_every_point_then_rerun_s3() {
    let dir = tempdir();
    run_kills(s3("kill"), dir.path());
}

#[test]
fn kill_at_moments_spread_over_a_sync_then_rerun_local_store() {
    let dir = tempdir();
    run_spread_kills(local(dir.path()), dir.path());
}

#[test]
fn kill_at_moments_spread_over_a_sync_then_rerun_s3() {
    let dir = tempdir();
    run_spread_kills(s3("spread"), dir.path());
}
