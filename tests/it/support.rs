//! Shared helpers: run the binaries, make companies, open the source and the staging store.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const SIM: &str = env!("CARGO_BIN_EXE_sage50-sim");
pub const CONNECTOR: &str = env!("CARGO_BIN_EXE_connector");

/// The first line a process started with a piped stdout prints (its address, its port),
/// without the line end; "" when it closed stdout first.
pub fn first_line(child: &mut std::process::Child) -> String {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout is piped"))
        .read_line(&mut line)
        .unwrap_or_default();
    line.trim_end().to_owned()
}

/// A temporary folder that lives as long as the value.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("connector-it-")
        .tempdir()
        .expect("temp dir")
}

/// A generated company: its folder and ODBC connection string.
pub struct Company {
    pub dir: PathBuf,
    pub odbc: String,
}

impl Company {
    pub fn database(&self) -> PathBuf {
        self.dir.join("ACCDATA").join("SAGE50.DB")
    }

    pub fn sqlite(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.database()).expect("open source")
    }
}

/// Runs `sage50-sim` with extra arguments and returns the company.
pub fn sim(dir: &Path, args: &[&str]) -> Company {
    let out = Command::new(SIM)
        .arg("--out")
        .arg(dir)
        .args(args)
        .output()
        .expect("run sage50-sim");
    assert!(
        out.status.success(),
        "sage50-sim failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let odbc = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    Company {
        dir: dir.to_owned(),
        odbc,
    }
}

/// Generates a company from a seed and a number of transactions.
pub fn generated(dir: &Path, seed: u64, transactions: u64) -> Company {
    sim(
        dir,
        &[
            "--seed",
            &seed.to_string(),
            "--transactions",
            &transactions.to_string(),
        ],
    )
}

/// Runs `connector extract` and returns its output (success or not).
pub fn extract(odbc: &str, staging: &Path, extra: &[&str]) -> Output {
    Command::new(CONNECTOR)
        .args(["extract", "--odbc", odbc, "--staging"])
        .arg(staging)
        .args(extra)
        .env("RUST_LOG", "info")
        .output()
        .expect("run connector")
}

/// Runs `connector extract`, asserting success.
pub fn extract_ok(odbc: &str, staging: &Path) -> Output {
    let out = extract(odbc, staging, &[]);
    assert!(out.status.success(), "extract failed: {}", text(&out));
    out
}

/// Standard output and error together, for messages and assertions.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Opens a staging store read-only.
pub fn staging(path: &Path) -> duckdb::Connection {
    let config = duckdb::Config::default()
        .access_mode(duckdb::AccessMode::ReadOnly)
        .expect("config");
    duckdb::Connection::open_with_flags(path, config).expect("open staging")
}

/// The generation id recorded in a staging store.
pub fn generation(path: &Path) -> String {
    staging(path)
        .query_row("SELECT generation FROM _connector_generation", [], |r| {
            r.get(0)
        })
        .expect("generation row")
}

/// The golden company (fixtures/golden/company.sql) in `dir`.
pub fn golden(dir: &Path) -> Company {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/golden/company.sql");
    sim(dir, &["--script", script.to_str().unwrap()])
}

/// Runs `connector sync` for `company` with the state folder `state`, the store `store`
/// (None: the default local store), extra arguments and environment.
pub fn sync(
    odbc: &str,
    company: &str,
    state: &Path,
    store: Option<&str>,
    extra: &[&str],
    env: &[(&str, String)],
) -> Output {
    let mut cmd = Command::new(CONNECTOR);
    cmd.args(["sync", "--odbc", odbc, "--company", company, "--state-dir"])
        .arg(state)
        .args(extra)
        .env("RUST_LOG", "info");
    if let Some(url) = store {
        cmd.args(["--store", url]);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run connector sync")
}

/// Runs `connector sync`, asserting success.
pub fn sync_ok(
    odbc: &str,
    company: &str,
    state: &Path,
    store: Option<&str>,
    env: &[(&str, String)],
) -> Output {
    let out = sync(odbc, company, state, store, &[], env);
    assert!(out.status.success(), "sync failed: {}", text(&out));
    out
}

/// `connector snapshot verify STORE COMPANY [extra]`.
pub fn verify(store: &str, company: &str, extra: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(CONNECTOR);
    cmd.args(["snapshot", "verify", store, company]).args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run connector snapshot verify")
}

/// The test server reads requests carrying an Authorization header as authenticated, without
/// checking the signature: enough for the tests' own look-ups of what the connector wrote.
const UNCHECKED_AUTH: &str = "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0";

/// The test S3 server (`make s3-up` starts it; `make test` does so itself).
pub struct S3 {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

impl S3 {
    pub fn from_env() -> S3 {
        let endpoint = std::env::var("CONNECTOR_TEST_S3_ENDPOINT").expect(
            "CONNECTOR_TEST_S3_ENDPOINT is not set: run the tests with `make test`, or `make s3-up` and export it",
        );
        S3 { endpoint }
    }

    fn host_port(&self) -> &str {
        self.endpoint.trim_start_matches("http://")
    }

    /// A plain HTTP request to the server (the test server does not check signatures).
    pub fn http(&self, method: &str, target: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(self.host_port()).expect("S3 server up");
        write!(
            stream,
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nAuthorization: {UNCHECKED_AUTH}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.host_port()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, response)
    }

    /// Creates a bucket with a unique name and returns it.
    pub fn bucket(&self, hint: &str) -> String {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "{hint}-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let (status, body) = self.http("PUT", &format!("/{name}"));
        assert_eq!(status, 200, "creating bucket {name}: {body}");
        name
    }

    /// The AWS settings that reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// Multipart uploads started and neither completed nor aborted in `bucket`.
    pub fn open_uploads(&self, bucket: &str) -> usize {
        let (status, body) = self.http("GET", &format!("/{bucket}?uploads"));
        assert_eq!(status, 200, "listing uploads: {body}");
        body.matches("<UploadId>").count()
    }
}

/// `FILE.suffix` beside `FILE`.
pub fn sibling_path(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}
