//! `connector sync` and `connector snapshot verify` against real stores: a local folder and
//! a real S3-compatible server process on loopback. The published Parquet is read back by
//! pyarrow (another implementation), the manifest checked against its JSON Schema, and the
//! golden company's published figures against the ones worked out by hand.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use connector::publish::{Store, StoreConfig, file_url};
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde_json::Value;

use crate::support::{S3, generated, golden, sync, sync_ok, tempdir, text, verify};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn json(path: &Path) -> Value {
    serde_json::from_slice(
        &std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

/// The manifest `latest.json` names in a local store.
fn latest_manifest(store: &Path, company: &str) -> Value {
    let latest = json(&store.join(company).join("latest.json"));
    json(&store.join(latest["manifestKey"].as_str().unwrap()))
}

fn schema_validator() -> jsonschema::Validator {
    let schema = json(&Path::new(ROOT).join("schemas/manifest.schema.json"));
    jsonschema::validator_for(&schema).expect("the manifest schema is a valid JSON Schema")
}

fn assert_valid(manifest: &Value, what: &str) {
    let validator = schema_validator();
    let errors: Vec<String> = validator
        .iter_errors(manifest)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} breaks schemas/manifest.schema.json: {errors:#?}"
    );
}

fn python() -> String {
    std::env::var("CONNECTOR_TEST_PYTHON")
        .expect("CONNECTOR_TEST_PYTHON is not set: run the tests with `make test`")
}

/// Runs a Python script (with pyarrow) and returns its standard output.
fn py(script: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run python");
    assert!(out.status.success(), "python failed: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn golden_manifest_follows_the_schema_and_reads_back() {
    let path = Path::new(ROOT).join("fixtures/snapshot/manifest.json");
    let golden = json(&path);
    assert_valid(&golden, "fixtures/snapshot/manifest.json");
    let parsed = connector::snapshot::manifest::Manifest::from_json(&std::fs::read(&path).unwrap())
        .expect("the golden manifest parses");
    let again: Value = serde_json::from_slice(&parsed.to_json()).unwrap();
    assert_eq!(
        again, golden,
        "writing the parsed golden manifest changes it"
    );
    // The schema is not a rubber stamp: a manifest with money as a number, or a missing hash,
    // is refused.
    let validator = schema_validator();
    let mut bad = golden.clone();
    bad["dataTypes"]["invoices"]["controlTotals"]["sums"]["totalAmount"] = serde_json::json!(1.5);
    assert!(
        !validator.is_valid(&bad),
        "money as a JSON number passed the schema"
    );
    let mut bad = golden.clone();
    bad["dataTypes"]["invoices"]["files"][0]
        .as_object_mut()
        .unwrap()
        .remove("sha256");
    assert!(
        !validator.is_valid(&bad),
        "a file without sha256 passed the schema"
    );
    let mut bad = golden.clone();
    bad["dataTypes"]["invoices"]["files"] = serde_json::json!([]);
    assert!(
        !validator.is_valid(&bad),
        "a data type without files passed the schema"
    );
    let mut bad = golden.clone();
    bad["dataTypes"]["invoices"]["files"][0]["part"] = serde_json::json!("../x");
    assert!(
        !validator.is_valid(&bad),
        "a part that is a path passed the schema"
    );
}

#[test]
fn golden_company_is_published_whole_and_pyarrow_reads_the_hand_computed_figures() {
    let dir = tempdir();
    let company = golden(&dir.path().join("company"));
    let state = dir.path().join("state");
    let out = sync_ok(&company.odbc, "golden", &state, None, &[]);
    let summary = text(&out);
    for stage in ["extract", "normalise", "export", "publish"] {
        assert!(
            summary.contains(stage),
            "no time for stage {stage}: {summary}"
        );
    }
    // The default store is the folder "store" in the state folder.
    let store = state.join("store");
    let manifest = latest_manifest(&store, "golden");
    assert_valid(&manifest, "the published manifest");
    assert_eq!(manifest["companyId"], "golden");
    assert_eq!(
        manifest["source"]["companyName"]
            .as_str()
            .map(|s| !s.is_empty()),
        Some(true)
    );

    let expected: toml::Table =
        std::fs::read_to_string(Path::new(ROOT).join("fixtures/golden/normalised.toml"))
            .unwrap()
            .parse()
            .unwrap();
    let types = manifest["dataTypes"].as_object().unwrap();
    for (name, records) in expected["records"].as_table().unwrap() {
        let entry = &types[name.as_str()];
        assert_eq!(entry["rows"].as_i64(), records.as_integer(), "{name} rows");
        assert_eq!(
            entry["controlTotals"]["records"].as_i64(),
            records.as_integer(),
            "{name} records"
        );
    }
    for (name, deleted) in expected["deleted"].as_table().unwrap() {
        assert_eq!(
            types[name.as_str()]["controlTotals"]["deleted"].as_i64(),
            deleted.as_integer(),
            "{name} deleted"
        );
    }
    // Hand-computed sums named DATATYPE_FIELD: the manifest's control totals, and pyarrow's
    // own exact decimal sum over the published Parquet file.
    let mut checked = 0;
    for (key, value) in expected["sums"].as_table().unwrap() {
        let Some((data_type, field)) = key.split_once('_') else {
            continue;
        };
        let Some(entry) = types.get(data_type) else {
            continue;
        };
        if entry["controlTotals"]["sums"].get(field).is_none() {
            continue;
        }
        let want = value.as_str().unwrap();
        assert_eq!(
            entry["controlTotals"]["sums"][field], want,
            "manifest sum {key}"
        );
        // the data type's files read as one dataset
        let files = files_of(&store, entry);
        let mut args = vec![field];
        args.extend(files.iter().map(String::as_str));
        let got = py(
            "import sys, decimal, pyarrow.parquet as pq, pyarrow as pa\n\
             t = pq.read_table(sys.argv[2:])\n\
             assert pa.types.is_decimal(t.schema.field(sys.argv[1]).type), t.schema.field(sys.argv[1]).type\n\
             rows = t.select([sys.argv[1], 'isDeleted']).to_pylist()\n\
             print(sum((r[sys.argv[1]] or decimal.Decimal(0)) for r in rows if not r['isDeleted']).quantize(decimal.Decimal('0.01')))",
            &args,
        );
        assert_eq!(got.trim(), want, "pyarrow's sum of {key} in {files:?}");
        checked += 1;
    }
    assert!(
        checked >= 8,
        "only {checked} hand-computed sums were compared"
    );

    let out = verify(&file_url(&store), "golden", &[], &[]);
    assert!(out.status.success(), "verify: {}", text(&out));
    assert!(text(&out).contains("whole"), "{}", text(&out));
}

#[test]
fn parquet_is_sorted_by_id_zstd_and_readable_without_help() {
    let dir = tempdir();
    let company = generated(&dir.path().join("company"), 11, 3_000);
    let state = dir.path().join("state");
    sync_ok(&company.odbc, "acme", &state, None, &[]);
    let manifest = latest_manifest(&state.join("store"), "acme");
    let files: Vec<String> = manifest["dataTypes"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|e| files_of(&state.join("store"), e))
        .collect();
    let mut args: Vec<&str> = files.iter().map(String::as_str).collect();
    let rows_by_file = py(
        "import sys, pyarrow.parquet as pq\n\
         for f in sys.argv[1:]:\n\
         \x20   md = pq.ParquetFile(f).metadata\n\
         \x20   codecs = {md.row_group(g).column(c).compression for g in range(md.num_row_groups) for c in range(md.num_columns)}\n\
         \x20   assert codecs <= {'ZSTD'}, (f, codecs)\n\
         \x20   ids = pq.read_table(f, columns=['id']).column('id').to_pylist()\n\
         \x20   assert ids == sorted(ids) and len(set(ids)) == len(ids), f + ': ids not sorted and unique'\n\
         \x20   print(f, md.num_rows)",
        &args,
    );
    let by_key: BTreeMap<&str, i64> = manifest["dataTypes"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|e| e["files"].as_array().unwrap())
        .map(|f| (f["key"].as_str().unwrap(), f["rows"].as_i64().unwrap()))
        .collect();
    for line in rows_by_file.lines() {
        let (file, rows) = line.rsplit_once(' ').unwrap();
        let key = by_key.keys().find(|k| file.ends_with(*k)).unwrap();
        assert_eq!(rows.parse::<i64>().unwrap(), by_key[key], "{file}");
    }
    args.clear();
}

#[test]
fn unchanged_sync_uploads_only_manifest_and_pointer_and_a_change_only_its_data_type() {
    let dir = tempdir();
    let company = generated(&dir.path().join("company"), 12, 2_000);
    let state = dir.path().join("state");
    let store = state.join("store");
    let report = |name: &str| json(&dir.path().join(format!("{name}.json")));
    let run = |name: &str| {
        let json_path = dir.path().join(format!("{name}.json"));
        let out = sync(
            &company.odbc,
            "acme",
            &state,
            None,
            &["--json", json_path.to_str().unwrap()],
            &[],
        );
        assert!(out.status.success(), "{}", text(&out));
    };
    run("first");
    run("second");
    let (first, second) = (report("first"), report("second"));
    let sent = |r: &Value| -> u64 {
        r["published"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["bytes_uploaded"].as_u64().unwrap() + p["bytes_metadata"].as_u64().unwrap())
            .sum()
    };
    // Nothing but the manifest and the pointer (on this small company they are 2% of the
    // bytes; the benchmark measures the 1,000,000-split one).
    assert_eq!(second["published"][0]["files_uploaded"], 0, "{second:#}");
    assert_eq!(second["published"][0]["bytes_uploaded"], 0, "{second:#}");
    assert!(
        sent(&second) * 20 < sent(&first),
        "second sync sent {} of {}",
        sent(&second),
        sent(&first)
    );
    assert_ne!(first["snapshot_id"], second["snapshot_id"]);

    // One customer's name changes in Sage: only the customers file is new.
    let changed = company
        .sqlite()
        .execute("UPDATE SALES_LEDGER SET NAME = 'Renamed Customer Ltd' WHERE ACCOUNT_REF = (SELECT MIN(ACCOUNT_REF) FROM SALES_LEDGER)", [])
        .unwrap();
    assert_eq!(changed, 1);
    run("third");
    let third = report("third");
    let uploaded: Vec<&str> = third["data_types"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["uploaded"] == true)
        .map(|d| d["data_type"].as_str().unwrap())
        .collect();
    // The data types whose rows really changed, found by pyarrow comparing the two snapshots'
    // tables (the name is also carried by the customer's invoices and payments).
    let manifest_of = |r: &Value| {
        json(&store.join(format!(
            "acme/snapshots/{}/manifest.json",
            r["snapshot_id"].as_str().unwrap()
        )))
    };
    let (before, after) = (manifest_of(&second), manifest_of(&third));
    let mut args = Vec::new();
    for (name, entry) in after["dataTypes"].as_object().unwrap() {
        args.push(name.clone());
        args.push(files_of(&store, &before["dataTypes"][name]).join(","));
        args.push(files_of(&store, entry).join(","));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let really = py(
        "import sys, pyarrow.parquet as pq\n\
         a = sys.argv[1:]\n\
         t = lambda files: pq.read_table(files.split(','))\n\
         print(' '.join(a[i] for i in range(0, len(a), 3) if not t(a[i + 1]).equals(t(a[i + 2]))))",
        &args,
    );
    let really: Vec<&str> = really.split_whitespace().collect();
    assert_eq!(uploaded, really, "{third:#}");
    assert!(
        uploaded.contains(&"customers") && !uploaded.contains(&"accounts"),
        "{uploaded:?}"
    );
    // Three snapshots, and the data files are only those the three manifests name.
    let manifests = std::fs::read_dir(store.join("acme/snapshots"))
        .unwrap()
        .count();
    assert_eq!(manifests, 3);
    let data_files = walk(&store.join("acme/data")).len();
    let files = |m: &Value| -> usize {
        m["dataTypes"]
            .as_object()
            .unwrap()
            .values()
            .map(|e| e["files"].as_array().unwrap().len())
            .sum()
    };
    let first_files = files(&manifest_of(&first));
    assert_eq!(first_files, files(&after), "a part appeared or went");
    // (each changed data type has one file on a company this small)
    assert_eq!(data_files, first_files + uploaded.len());
}

/// A company past one block of ids: its large data types are split into parts by id, every
/// record in the part its id gives; the parts read as one dataset in pyarrow and DuckDB are
/// the data type; and editing a few recent transactions sends only the files of their part.
#[test]
fn a_company_past_one_block_of_ids_is_published_in_parts_and_an_edit_sends_only_its_part() {
    let dir = tempdir();
    let company = generated(&dir.path().join("company"), 23, 24_000);
    let state = dir.path().join("state");
    let store = state.join("store");
    let run = |name: &str| -> Value {
        let json_path = dir.path().join(format!("{name}.json"));
        let out = sync(
            &company.odbc,
            "acme",
            &state,
            None,
            &["--json", json_path.to_str().unwrap()],
            &[],
        );
        assert!(out.status.success(), "{}", text(&out));
        json(&json_path)
    };
    let first = run("first");
    let manifest_of = |r: &Value| {
        json(&store.join(format!(
            "acme/snapshots/{}/manifest.json",
            r["snapshot_id"].as_str().unwrap()
        )))
    };
    let before = manifest_of(&first);
    let highest: i64 = company
        .sqlite()
        .query_row("SELECT max(HEADER_NUMBER) FROM AUDIT_HEADER", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(
        highest >= 16_384,
        "the company has only {highest} transactions"
    );
    // (invoices and journal entries are numbered by transaction, bank transactions by split)
    for name in ["invoices", "journalEntries", "bankTransactions"] {
        let parts: Vec<&str> = before["dataTypes"][name]["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["part"].as_str().unwrap())
            .collect();
        assert!(
            parts.len() >= 2 && parts.starts_with(&["n000000", "n000001"]),
            "{name}: {parts:?}"
        );
    }
    // Each file holds the records of its part only, and the files read as one dataset
    // (pyarrow and DuckDB, neither told anything of parts) are the data type: its rows, ids
    // unique, and its control totals' record count.
    let mut args = Vec::new();
    for (name, entry) in before["dataTypes"].as_object().unwrap() {
        args.push(format!(
            "{name}={}={}",
            entry["rows"],
            entry["files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| format!(
                    "{}:{}",
                    f["part"].as_str().unwrap(),
                    store.join(f["key"].as_str().unwrap()).display()
                ))
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let checked = py(
        "import sys, re, pyarrow.parquet as pq\n\
         for arg in sys.argv[1:]:\n\
         \x20   name, rows, files = arg.split('=')\n\
         \x20   files = [f.split(':', 1) for f in files.split(',')]\n\
         \x20   for part, path in files:\n\
         \x20       for i in pq.read_table(path, columns=['id']).column('id').to_pylist():\n\
         \x20           m = re.match(r'[0-9]{1,15}', i)\n\
         \x20           want = 'n%06d' % (int(m.group(0)) // 16384) if m else 'other'\n\
         \x20           assert part == want, (name, part, i)\n\
         \x20   paths = [p for _, p in files]\n\
         \x20   t = pq.ParquetDataset(paths).read()\n\
         \x20   ids = t.column('id').to_pylist()\n\
         \x20   assert len(ids) == int(rows) == len(set(ids)), (name, len(ids), rows)\n\
         print(len(sys.argv) - 1)",
        &args,
    );
    assert_eq!(checked.trim(), "16", "{checked}");
    let duck = duckdb::Connection::open_in_memory().unwrap();
    for (name, entry) in before["dataTypes"].as_object().unwrap() {
        let list: Vec<String> = files_of(&store, entry)
            .iter()
            .map(|f| format!("'{f}'"))
            .collect();
        let (rows, ids): (i64, i64) = duck
            .query_row(
                &format!(
                    "SELECT count(*), count(DISTINCT id) FROM read_parquet([{}])",
                    list.join(", ")
                ),
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(
            (rows, ids),
            (entry["rows"].as_i64().unwrap(), rows),
            "{name}"
        );
    }

    // Twenty recent sales invoices edited in Sage: only the files of their part change.
    let edited = company
        .sqlite()
        .execute_batch(
            "CREATE TEMP TABLE edited AS SELECT HEADER_NUMBER FROM AUDIT_HEADER WHERE TYPE = 'SI' ORDER BY HEADER_NUMBER DESC LIMIT 20;
             UPDATE AUDIT_HEADER SET DETAILS = substr(DETAILS || ' (edited)', 1, 60) WHERE HEADER_NUMBER IN (SELECT HEADER_NUMBER FROM edited);
             UPDATE AUDIT_SPLIT SET DETAILS = substr(DETAILS || ' (edited)', 1, 60) WHERE HEADER_NUMBER IN (SELECT HEADER_NUMBER FROM edited);",
        );
    edited.unwrap();
    let second = run("second");
    let after = manifest_of(&second);
    let files = files_by_part;
    let (old, new) = (files(&before), files(&after));
    assert_eq!(
        old.keys().collect::<Vec<_>>(),
        new.keys().collect::<Vec<_>>()
    );
    let changed: Vec<&str> = new
        .iter()
        .filter(|(k, sha)| old[*k] != **sha)
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(
        changed,
        ["invoices/n000001", "journalEntries/n000001"],
        "{second:#}"
    );
    let published = &second["published"][0];
    assert_eq!(published["files_uploaded"], 2, "{second:#}");
    let whole: u64 = ["invoices", "journalEntries"]
        .iter()
        .map(|t| after["dataTypes"][t]["bytes"].as_u64().unwrap())
        .sum();
    let sent = published["bytes_uploaded"].as_u64().unwrap();
    assert!(
        sent * 2 < whole,
        "{sent} bytes sent for two parts, of the two data types' {whole}"
    );
    let out = verify(&file_url(&store), "acme", &[], &[]);
    assert!(out.status.success(), "verify: {}", text(&out));
}

/// A manifest's files: `DATATYPE/PART` → SHA-256.
pub fn files_by_part(m: &Value) -> BTreeMap<String, String> {
    m["dataTypes"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(name, e)| {
            e["files"].as_array().unwrap().iter().map(move |f| {
                (
                    format!("{name}/{}", f["part"].as_str().unwrap()),
                    f["sha256"].as_str().unwrap().to_owned(),
                )
            })
        })
        .collect()
}

/// The local paths of a manifest entry's files (`store` is a local folder store).
pub fn files_of(store: &Path, entry: &Value) -> Vec<String> {
    entry["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            store
                .join(f["key"].as_str().unwrap())
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// Every file under `dir`.
pub fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn verify_names_the_damaged_missing_or_altered_object() {
    let dir = tempdir();
    let company = golden(&dir.path().join("company"));
    let state = dir.path().join("state");
    sync_ok(&company.odbc, "golden", &state, None, &[]);
    let store = state.join("store");
    let url = file_url(&store);
    let manifest = latest_manifest(&store, "golden");
    let invoices = store.join(
        manifest["dataTypes"]["invoices"]["files"][0]["key"]
            .as_str()
            .unwrap(),
    );
    let original = std::fs::read(&invoices).unwrap();

    // One flipped byte.
    let mut damaged = original.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x55;
    std::fs::write(&invoices, &damaged).unwrap();
    let out = verify(&url, "golden", &[], &[]);
    assert!(
        !out.status.success(),
        "a damaged file passed: {}",
        text(&out)
    );
    assert!(
        text(&out).contains("invoices") && text(&out).contains("SHA-256"),
        "{}",
        text(&out)
    );

    // Missing.
    std::fs::remove_file(&invoices).unwrap();
    let out = verify(&url, "golden", &[], &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("missing"), "{}", text(&out));
    std::fs::write(&invoices, &original).unwrap();
    assert!(verify(&url, "golden", &[], &[]).status.success());

    // A manifest altered after publication no longer matches the pointer's hash.
    let latest = json(&store.join("golden/latest.json"));
    let mpath = store.join(latest["manifestKey"].as_str().unwrap());
    let altered = std::fs::read_to_string(&mpath)
        .unwrap()
        .replace("\"rows\": 7", "\"rows\": 8");
    std::fs::write(&mpath, altered).unwrap();
    let out = verify(&url, "golden", &[], &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("latest.json records"), "{}", text(&out));

    // A named snapshot, and a company with none.
    let id = latest["snapshotId"].as_str().unwrap();
    let out = verify(&url, "golden", &["--snapshot", id], &[]);
    assert!(!out.status.success(), "{}", text(&out));
    let out = verify(&url, "nobody", &[], &[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("no published snapshot"),
        "{}",
        text(&out)
    );
}

#[test]
fn s3_sync_publishes_verifies_and_multipart_leaves_no_open_upload() {
    let s3 = S3::from_env();
    let bucket = s3.bucket("sync");
    let dir = tempdir();
    let company = golden(&dir.path().join("company"));
    let state = dir.path().join("state");
    let url = format!("s3://{bucket}/some/prefix");
    // Every file in parts, so multipart upload is exercised on these small files.
    let out = sync(
        &company.odbc,
        "golden",
        &state,
        Some(&url),
        &["--multipart-above", "0"],
        &s3.env(),
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = verify(&url, "golden", &[], &s3.env());
    assert!(out.status.success(), "verify: {}", text(&out));
    assert_eq!(s3.open_uploads(&bucket), 0);
    // The keys are under the prefix.
    let (status, listing) = s3.http(
        "GET",
        &format!("/{bucket}?list-type=2&prefix=some/prefix/golden/latest.json"),
    );
    assert_eq!(status, 200);
    assert!(
        listing.contains("<Key>some/prefix/golden/latest.json</Key>"),
        "{listing}"
    );
    // pyarrow reads the published file straight from S3.
    let latest: Value = {
        let (_, body) = s3.http("GET", &format!("/{bucket}/some/prefix/golden/latest.json"));
        serde_json::from_str(body.split("\r\n\r\n").nth(1).unwrap()).unwrap()
    };
    let id = latest["snapshotId"].as_str().unwrap();
    let rows = py(
        "import sys, json, pyarrow.fs as fs, pyarrow.parquet as pq\n\
         s3 = fs.S3FileSystem(endpoint_override=sys.argv[1], scheme='http', access_key='test', secret_key='test', region='us-east-1')\n\
         m = json.load(s3.open_input_file(sys.argv[2] + '/some/prefix/golden/snapshots/' + sys.argv[3] + '/manifest.json'))\n\
         print(pq.read_table([sys.argv[2] + '/some/prefix/' + f['key'] for f in m['dataTypes']['invoices']['files']], filesystem=s3).num_rows)",
        &[&s3.endpoint, &bucket, id],
    );
    assert_eq!(rows.trim(), "7");
}

fn s3_store(s3: &S3, bucket: &str) -> Store {
    let mut config = StoreConfig::new(format!("s3://{bucket}/p"));
    config.options = s3
        .env()
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    Store::open(&config).expect("open the S3 store")
}

#[test]
fn conditional_writes_really_are_conditional_on_the_s3_server_and_the_local_folder() {
    let s3 = S3::from_env();
    let bucket = s3.bucket("cond");
    let dir = tempdir();
    let local = Store::open(&StoreConfig::new(file_url(dir.path()))).unwrap();
    let remote = s3_store(&s3, &bucket);
    let rt = connector::publish::runtime();
    rt.block_on(async {
        for store in [&local, &remote] {
            let raw = store.object_store();
            let key = store.path("c/latest.json");
            let put = |mode: PutMode, body: &'static str| {
                let raw = raw.clone();
                let key = key.clone();
                async move {
                    raw.put_opts(
                        &key,
                        PutPayload::from_static(body.as_bytes()),
                        PutOptions::from(mode),
                    )
                    .await
                }
            };
            put(PutMode::Create, "one").await.expect("first create");
            let second = put(PutMode::Create, "two").await;
            assert!(
                matches!(
                    second,
                    Err(object_store::Error::AlreadyExists { .. })
                        | Err(object_store::Error::Precondition { .. })
                ),
                "{}: create over an existing object was not refused: {second:?}",
                store.url
            );
            let body = raw.get(&key).await.unwrap().bytes().await.unwrap();
            assert_eq!(&body[..], b"one", "{}", store.url);
            if store.url.starts_with("s3://") {
                let meta = raw.head(&key).await.unwrap();
                let current = UpdateVersion {
                    e_tag: meta.e_tag.clone(),
                    version: meta.version.clone(),
                };
                put(PutMode::Update(current.clone()), "three")
                    .await
                    .expect("update with the current ETag");
                // The ETag read before that update is stale now: the write must be refused.
                let stale = put(PutMode::Update(current), "four").await;
                assert!(
                    matches!(stale, Err(object_store::Error::Precondition { .. })),
                    "an update with a stale ETag was not refused: {stale:?}"
                );
                let body = raw.get(&key).await.unwrap().bytes().await.unwrap();
                assert_eq!(&body[..], b"three");
            }
        }
    });
}

#[test]
fn open_multipart_uploads_under_the_company_are_aborted_even_unjournalled() {
    let s3 = S3::from_env();
    let bucket = s3.bucket("orphans");
    let store = s3_store(&s3, &bucket);
    let dir = tempdir();
    let company = golden(&dir.path().join("company"));
    // Uploads started and never finished, as by a process killed between S3 creating them and
    // the journal recording them: one under this company, one under another company.
    let raw = store.object_store();
    let rt = connector::publish::runtime();
    rt.block_on(async {
        for key in [
            "p/golden/data/invoices/x.parquet",
            "p/other/data/invoices/x.parquet",
        ] {
            let mut upload = raw
                .put_multipart(&object_store::path::Path::from(key))
                .await
                .unwrap();
            upload
                .put_part(PutPayload::from_static(b"partial"))
                .await
                .unwrap();
            std::mem::forget(upload); // no abort on drop: left open
        }
    });
    assert_eq!(s3.open_uploads(&bucket), 2);
    let state = dir.path().join("state");
    let url = format!("s3://{bucket}/p");
    let out = sync(&company.odbc, "golden", &state, Some(&url), &[], &s3.env());
    assert!(out.status.success(), "{}", text(&out));
    let (_, listing) = s3.http("GET", &format!("/{bucket}?uploads"));
    assert_eq!(s3.open_uploads(&bucket), 1, "{listing}");
    assert!(
        listing.contains("p/other/"),
        "the other company's upload was touched: {listing}"
    );
}

#[test]
fn unreachable_store_keeps_snapshots_in_the_outbox_and_publishes_them_in_order_later() {
    let s3 = S3::from_env();
    let bucket = s3.bucket("outbox");
    let dir = tempdir();
    let company = generated(&dir.path().join("company"), 13, 1_000);
    let state = dir.path().join("state");
    let url = format!("s3://{bucket}/x");
    // Nothing listens on port 9 of loopback.
    let mut down = s3.env();
    down[0].1 = "http://127.0.0.1:9".into();
    let queued = |n: usize| {
        let out = sync(
            &company.odbc,
            "acme",
            &state,
            Some(&url),
            &["--store-timeout", "1", "--outbox-limit", "2"],
            &down,
        );
        assert_eq!(out.status.code(), Some(75), "run {n}: {}", text(&out));
        assert!(text(&out).contains("outbox"), "{}", text(&out));
    };
    queued(1);
    let change = |name: &str| {
        company
            .sqlite()
            .execute("UPDATE SALES_LEDGER SET NAME = ?1 WHERE ACCOUNT_REF = (SELECT MIN(ACCOUNT_REF) FROM SALES_LEDGER)", [name])
            .unwrap();
    };
    change("Second Name Ltd");
    queued(2);
    change("Third Name Ltd");
    queued(3);
    let outbox = state.join("companies/acme/outbox");
    let mut waiting: Vec<String> = std::fs::read_dir(&outbox)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    waiting.sort();
    assert_eq!(
        waiting.len(),
        2,
        "the outbox keeps at most --outbox-limit snapshots: {waiting:?}"
    );

    // The store is back: the two waiting snapshots go first, in order, then a new one.
    change("Fourth Name Ltd");
    let json_path = dir.path().join("back.json");
    let out = sync(
        &company.odbc,
        "acme",
        &state,
        Some(&url),
        &["--json", json_path.to_str().unwrap()],
        &s3.env(),
    );
    assert!(out.status.success(), "{}", text(&out));
    let report = json(&json_path);
    let published: Vec<&str> = report["published"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["snapshot_id"].as_str().unwrap())
        .collect();
    assert_eq!(published.len(), 3, "{report:#}");
    assert_eq!(&published[..2], &[waiting[0].as_str(), waiting[1].as_str()]);
    let mut sorted = published.clone();
    sorted.sort();
    assert_eq!(published, sorted, "published out of order");
    assert_eq!(published[2], report["snapshot_id"].as_str().unwrap());
    assert_eq!(
        std::fs::read_dir(&outbox)
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .count(),
        0
    );
    let out = verify(&url, "acme", &[], &s3.env());
    assert!(
        out.status.success() && text(&out).contains(published[2]),
        "{}",
        text(&out)
    );
    // The older ones are in the store too, whole.
    for id in &published[..2] {
        let out = verify(&url, "acme", &["--snapshot", id], &s3.env());
        assert!(out.status.success(), "{id}: {}", text(&out));
    }
}

/// A TCP relay to `target` on a loopback port that closes the first `drops` connections at
/// once (a store that is down), then relays: returns its URL and its own count of the
/// connections it dropped.
fn flaky_relay(
    target: &str,
    drops: usize,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let target = target.to_owned();
    let dropped = std::sync::Arc::new(AtomicUsize::new(0));
    let count = dropped.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            if count.load(Ordering::SeqCst) < drops {
                drop(client); // connection closed at once: a transient failure
                count.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            let Ok(server) = TcpStream::connect(&target) else {
                continue;
            };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut c1, mut s1) = (client, server);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c1, &mut s1);
                let _ = s1.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (format!("http://{addr}"), dropped)
}

#[test]
fn a_store_that_is_down_for_a_while_is_ridden_out_by_retries_with_backoff() {
    let s3 = S3::from_env();
    let bucket = s3.bucket("outage");
    let dir = tempdir();
    let company = golden(&dir.path().join("company"));
    let state = dir.path().join("state");
    let mut env = s3.env();
    // The store refuses the first four connections: the sync can only succeed by retrying.
    let (relay, dropped) = flaky_relay(s3.endpoint.trim_start_matches("http://"), 4);
    env[0].1 = relay;
    let url = format!("s3://{bucket}/x");
    let out = sync(
        &company.odbc,
        "golden",
        &state,
        Some(&url),
        &["--store-timeout", "60"],
        &env,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        dropped.load(std::sync::atomic::Ordering::SeqCst),
        4,
        "the relay's own count of the connections it dropped"
    );
    assert!(verify(&url, "golden", &[], &s3.env()).status.success());
}

#[test]
fn permanent_store_errors_fail_at_once_and_say_what_to_fix() {
    let s3 = S3::from_env();
    let dir = tempdir();
    let company = golden(&dir.path().join("company"));
    let state = dir.path().join("state");
    let started = std::time::Instant::now();
    let out = sync(
        &company.odbc,
        "golden",
        &state,
        Some("s3://no-such-bucket-here/x"),
        &["--store-timeout", "60"],
        &s3.env(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        started.elapsed().as_secs() < 30,
        "a missing bucket was retried for {:?}",
        started.elapsed()
    );
    let msg = text(&out);
    assert!(
        msg.contains("no-such-bucket-here") && msg.contains("bucket"),
        "{msg}"
    );

    for (url, says) in [
        ("ftp://x/y", "not supported"),
        ("relative/folder", "no scheme"),
    ] {
        let out = sync(&company.odbc, "golden", &state, Some(url), &[], &[]);
        assert!(!out.status.success());
        assert!(
            text(&out).contains(says) && text(&out).contains(url),
            "{}",
            text(&out)
        );
    }
    let out = sync(&company.odbc, "../etc", &state, None, &[], &[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("company id \"../etc\""),
        "{}",
        text(&out)
    );
}

#[test]
fn a_second_sync_of_the_same_company_is_refused_while_one_runs() {
    let dir = tempdir();
    let company = golden(&dir.path().join("company"));
    let state = dir.path().join("state");
    let lock_dir = state.join("companies/golden");
    std::fs::create_dir_all(&lock_dir).unwrap();
    let lock = std::fs::File::create(lock_dir.join("sync.lock")).unwrap();
    lock.lock().unwrap();
    let out = sync(&company.odbc, "golden", &state, None, &[], &[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("another sync of company golden"),
        "{}",
        text(&out)
    );
    drop(lock);
    sync_ok(&company.odbc, "golden", &state, None, &[]);
}

#[test]
fn a_failed_check_publishes_nothing_and_keeps_the_last_good_snapshot() {
    let dir = tempdir();
    let company = golden(&dir.path().join("company"));
    let state = dir.path().join("state");
    sync_ok(&company.odbc, "golden", &state, None, &[]);
    let before = std::fs::read(state.join("store/golden/latest.json")).unwrap();
    // Break the books: one journal line's amount changes, the trial balance no longer balances.
    company
        .sqlite()
        .execute("UPDATE AUDIT_JOURNAL SET AMOUNT = AMOUNT + 1 WHERE rowid = (SELECT MIN(rowid) FROM AUDIT_JOURNAL)", [])
        .unwrap();
    let out = sync(&company.odbc, "golden", &state, None, &[], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("normalisation failed") && text(&out).contains("trial_balance"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read(state.join("store/golden/latest.json")).unwrap(),
        before
    );
    assert_eq!(
        std::fs::read_dir(state.join("store/golden/snapshots"))
            .unwrap()
            .count(),
        1
    );
    assert!(
        verify(&file_url(&state.join("store")), "golden", &[], &[])
            .status
            .success()
    );
}

/// A store by URL, with the S3 server's settings for an `s3://` one.
fn open_store(url: &str, s3: &S3) -> Store {
    let mut config = StoreConfig::new(url);
    config.options = s3
        .env()
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    Store::open(&config).expect("open the store")
}

/// An object's bytes, if it is there.
fn object(store: &Store, key: &str) -> Option<Vec<u8>> {
    connector::publish::runtime()
        .block_on(store.get_bytes(key))
        .unwrap_or_else(|e| panic!("reading {key}: {e}"))
        .map(|b| b.to_vec())
}

/// The snapshot ids waiting in a state folder's outbox for `company`, oldest first.
fn waiting(state: &Path, company: &str) -> Vec<String> {
    let mut ids: Vec<String> =
        std::fs::read_dir(state.join("companies").join(company).join("outbox"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().into_string().unwrap())
                    .collect()
            })
            .unwrap_or_default();
    ids.sort();
    ids
}

/// `connector sync` of golden into `state` while the store is down: its snapshot waits in the
/// outbox. Returns the snapshot's id.
fn sync_while_the_store_is_down(odbc: &str, state: &Path, s3: &S3) -> String {
    let mut down = s3.env();
    down[0].1 = "http://127.0.0.1:9".into();
    let out = sync(
        odbc,
        "golden",
        state,
        Some("s3://down/x"),
        &["--store-timeout", "1"],
        &down,
    );
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    let ids = waiting(state, "golden");
    assert_eq!(ids.len(), 1, "{ids:?}");
    ids[0].clone()
}

/// `connector sync` that publishes what waits in the outbox and is then killed (right after
/// normalising, before it makes a snapshot of its own), so the store shows what publishing the
/// waiting snapshot did to `latest.json`.
fn publish_waiting_then_stop(
    odbc: &str,
    state: &Path,
    url: &str,
    env: &[(&str, String)],
) -> String {
    let mut env = env.to_vec();
    env.push((connector::failpoint::ENV, "normalised".into()));
    let out = sync(odbc, "golden", state, Some(url), &[], &env);
    let msg = text(&out);
    assert!(
        !out.status.success() && msg.contains("test kill point"),
        "the sync was not stopped at the kill point: {msg}"
    );
    msg
}

#[test]
fn publishing_a_snapshot_older_than_latest_leaves_latest_on_the_newer_one_on_both_stores() {
    let s3 = S3::from_env();
    let bucket = s3.bucket("older");
    let dir = tempdir();
    let company = golden(&dir.path().join("company"));
    let local = dir.path().join("store");
    for (n, url) in [file_url(&local), format!("s3://{bucket}/p")]
        .into_iter()
        .enumerate()
    {
        let store = open_store(&url, &s3);
        // PC A makes a snapshot while the store is down; PC B then publishes a newer one.
        let (pc_a, pc_b) = (
            dir.path().join(format!("a{n}")),
            dir.path().join(format!("b{n}")),
        );
        let older = sync_while_the_store_is_down(&company.odbc, &pc_a, &s3);
        sync_ok(&company.odbc, "golden", &pc_b, Some(&url), &s3.env());
        let newer_pointer = object(&store, "golden/latest.json").expect("B's latest.json");
        let newer: Value = serde_json::from_slice(&newer_pointer).unwrap();
        let newer = newer["snapshotId"].as_str().unwrap().to_owned();
        assert!(older < newer, "{url}: {older} does not sort before {newer}");

        // A's store comes back: it publishes its waiting, older snapshot.
        let msg = publish_waiting_then_stop(&company.odbc, &pc_a, &url, &s3.env());
        assert_eq!(
            waiting(&pc_a, "golden"),
            Vec::<String>::new(),
            "{url}: the older snapshot was not published: {msg}"
        );
        assert!(
            object(&store, &format!("golden/snapshots/{older}/manifest.json")).is_some(),
            "{url}: the older snapshot's manifest is not in the store: {msg}"
        );
        assert_eq!(
            object(&store, "golden/latest.json"),
            Some(newer_pointer),
            "{url}: latest.json was moved back from {newer} to {older}: {msg}"
        );
        assert!(
            msg.contains(&format!(
                "latest.json already names snapshot {newer}, newer than {older}"
            )),
            "{url}: the connector does not say it left latest on {newer}: {msg}"
        );
        let out = verify(&url, "golden", &[], &s3.env());
        assert!(
            out.status.success() && text(&out).contains(&newer),
            "{url}: {}",
            text(&out)
        );
    }
}

/// A TCP relay to `target` on a loopback port that, when the first `PUT …/latest.json` arrives,
/// runs `writer` (another publisher) before passing the request on, and records that request's
/// head: a change to `latest.json` exactly between the connector's read and its write.
fn relay_with_writer_before_the_pointer_put(
    target: &str,
    writer: Box<dyn FnOnce() + Send>,
) -> (String, std::sync::Arc<std::sync::Mutex<Option<String>>>) {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::{Arc, Mutex};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let target = target.to_owned();
    let writer = Arc::new(Mutex::new(Some(writer)));
    let seen = Arc::new(Mutex::new(None));
    let seen_by_relay = seen.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(&target) else {
                continue;
            };
            let (mut from_server, mut to_client) =
                (server.try_clone().unwrap(), client.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut from_server, &mut to_client);
                let _ = to_client.shutdown(std::net::Shutdown::Write);
            });
            let (writer, seen) = (writer.clone(), seen_by_relay.clone());
            // Requests one by one (keep-alive): head, then a Content-Length body.
            std::thread::spawn(move || {
                let (mut client, mut server) = (client, server);
                let mut buf = Vec::new();
                let mut chunk = [0u8; 64 * 1024];
                loop {
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match client.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                    let lower = head.to_ascii_lowercase();
                    assert!(
                        !lower.contains("transfer-encoding: chunked"),
                        "the relay reads Content-Length bodies only: {head}"
                    );
                    let length: usize = lower
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < head_end + length {
                        match client.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let target = head.split_whitespace().nth(1).unwrap_or("");
                    let path = target.split('?').next().unwrap_or("");
                    if head.starts_with("PUT ") && path.ends_with("/latest.json") {
                        let first = writer.lock().unwrap().take();
                        if let Some(write) = first {
                            write();
                            *seen.lock().unwrap() = Some(head.clone());
                        }
                    }
                    if server.write_all(&buf[..head_end + length]).is_err() {
                        return;
                    }
                    buf.drain(..head_end + length);
                }
            });
        }
    });
    (format!("http://{addr}"), seen)
}

#[test]
fn a_publisher_moving_latest_between_the_connectors_read_and_write_is_detected_and_not_clobbered() {
    let s3 = S3::from_env();
    let bucket = s3.bucket("race");
    let dir = tempdir();
    let company = golden(&dir.path().join("company"));
    let url = format!("s3://{bucket}/p");
    let store = open_store(&url, &s3);
    let (pc_a, pc_b) = (dir.path().join("a"), dir.path().join("b"));
    // A published once (latest has an ETag to match), then made a snapshot while the store was
    // down; so did B, later: B's snapshot is the newer.
    sync_ok(&company.odbc, "golden", &pc_a, Some(&url), &s3.env());
    let older = sync_while_the_store_is_down(&company.odbc, &pc_a, &s3);
    let newer = sync_while_the_store_is_down(&company.odbc, &pc_b, &s3);
    assert!(older < newer, "{older} does not sort before {newer}");

    // B publishes through the connector's own publish code, straight to the S3 server, while
    // A's conditional write of latest.json is held in the relay.
    let published_by_b = std::sync::Arc::new(std::sync::Mutex::new(None));
    let (b_outbox, b_store, b_result) = (
        pc_b.join("companies/golden/outbox"),
        open_store(&url, &s3),
        published_by_b.clone(),
    );
    let (endpoint, seen) = relay_with_writer_before_the_pointer_put(
        s3.endpoint.trim_start_matches("http://"),
        Box::new(move || {
            let outbox = connector::publish::Outbox::open(&b_outbox, 3).unwrap();
            let snap = outbox.pending().unwrap().remove(0);
            let published = connector::publish::runtime()
                .block_on(b_store.publish(&snap, &outbox, &indicatif::ProgressBar::hidden()))
                .map(|p| (p.snapshot_id, p.is_latest))
                .map_err(|e| e.to_string());
            *b_result.lock().unwrap() = Some(published);
        }),
    );
    let mut env = s3.env();
    env[0].1 = endpoint;
    let msg = publish_waiting_then_stop(&company.odbc, &pc_a, &url, &env);

    let head = seen.lock().unwrap().clone();
    let head = head.unwrap_or_else(|| panic!("A never wrote latest.json: {msg}"));
    assert_eq!(
        published_by_b.lock().unwrap().clone(),
        Some(Ok((newer.clone(), true))),
        "B's publish"
    );
    let latest: Value =
        serde_json::from_slice(&object(&store, "golden/latest.json").unwrap()).unwrap();
    assert_eq!(
        latest["snapshotId"], newer,
        "A clobbered B's latest.json with its older snapshot: {msg}"
    );
    assert!(
        head.to_ascii_lowercase().contains("\r\nif-match: "),
        "A's write of latest.json is not conditional on the version it read: {head}"
    );
    assert!(
        object(&store, &format!("golden/snapshots/{older}/manifest.json")).is_some(),
        "A's snapshot is not in the store: {msg}"
    );
    assert_eq!(waiting(&pc_a, "golden"), Vec::<String>::new(), "{msg}");
    assert!(
        msg.contains(&format!(
            "Another publisher moved latest.json to snapshot {newer}, newer than {older}"
        )),
        "A does not name the other publisher's snapshot: {msg}"
    );
    let out = verify(&url, "golden", &[], &s3.env());
    assert!(
        out.status.success() && text(&out).contains(&newer),
        "{}",
        text(&out)
    );
}
