//! Shared parts of the linking and agent tests: a real `connector-server`, a real
//! `connector run` agent process on a loopback port, a Sage settings tree with a `COMPANY`
//! file pointing at simulated companies, and a plain HTTP client that does what a browser
//! does (no redirects followed, cookies and headers by hand).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::server::Server;
use crate::support::{CONNECTOR, Company, tempdir};

/// The ODBC template that reaches a simulated company through the SQLite3 driver.
pub const SIM_TEMPLATE: &str = "Driver={{SQLite3}};Database={ACCDATA}/SAGE50.DB;NoCreat=1";

/// A free loopback port (bound, then released) outside the ephemeral range.
pub fn free_port() -> u16 {
    // Chosen below Linux's ephemeral range (32768-60999): a port handed out by a bind to
    // port 0 (every test server listens so) can never be this one while the test has not
    // bound it yet. Random within 20000-30000, so two tests rarely try the same one.
    use rand::Rng;
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let port = rng.random_range(20_000..30_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between 20000 and 30000")
}

/// An HTTP answer.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::String(self.body.clone()))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

/// One HTTP request, redirects not followed.
pub fn http(method: &str, url: &str, headers: &[(&str, &str)], body: Option<String>) -> Answer {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let mut req = client
            .request(method.parse().unwrap(), url)
            .timeout(Duration::from_secs(150));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        Answer {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: resp.text().await.unwrap(),
        }
    })
}

/// A Sage settings tree (`ROOT/2026/COMPANY`) listing the given company folders.
pub fn sage_root(root: &Path, companies: &[&Path]) -> PathBuf {
    let dir = root.join("2026");
    std::fs::create_dir_all(&dir).unwrap();
    let lines: Vec<String> = companies.iter().map(|c| c.display().to_string()).collect();
    std::fs::write(dir.join("COMPANY"), lines.join("\r\n") + "\r\n").unwrap();
    root.to_owned()
}

/// A running `connector run`; stopped with SIGTERM when dropped.
pub struct AgentProcess {
    child: Child,
    pub base: String,
    pub port: u16,
    pub state: PathBuf,
    pub args: Vec<String>,
}

impl AgentProcess {
    /// Starts an agent for `server` on `port`, with the Sage tree `root`.
    pub fn start(state: &Path, server: &str, port: u16, root: &Path, extra: &[&str]) -> Self {
        let mut args: Vec<String> = [
            "run",
            "--server",
            server,
            "--port",
            &port.to_string(),
            "--odbc-template",
            SIM_TEMPLATE,
            "--checkin-wait-secs",
            "5",
            "--publish-timeout-secs",
            "2",
            "--state-dir",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(state.display().to_string());
        args.push("--sage-root".into());
        args.push(root.display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn(state, args)
    }

    fn spawn(state: &Path, args: Vec<String>) -> Self {
        Self::spawn_program(CONNECTOR, state, args, &[])
    }

    /// Starts `program ARGS` (the agent, or the tray that runs the agent) and waits for the
    /// agent's "listening on" line.
    pub fn spawn_program(
        program: &str,
        state: &Path,
        args: Vec<String>,
        env: &[(&str, String)],
    ) -> Self {
        std::fs::create_dir_all(state).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(state.join("agent.log"))
            .unwrap();
        let mut child = Command::new(program)
            .args(&args)
            // debug for the agent: its scheduler passes are what tests wait on
            .env("RUST_LOG", "info,connector::agent=debug")
            // its start-at-logon entry goes under this home, not the real one
            .env("HOME", state.join("home"))
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start connector run");
        let line = crate::support::first_line(&mut child);
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "agent did not start: {line:?}; log: {}",
                    std::fs::read_to_string(state.join("agent.log")).unwrap_or_default()
                )
            })
            .to_owned();
        let port = base.rsplit(':').next().unwrap().parse().unwrap();
        AgentProcess {
            child,
            base,
            port,
            state: state.to_owned(),
            args,
        }
    }

    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// Starts the same agent again (after `stop`).
    pub fn restart(&mut self) {
        self.stop();
        // The status file is the stopped agent's until the new one writes its own.
        let _ = std::fs::remove_file(self.state.join("agent").join("status.json"));
        let again = Self::spawn(&self.state, self.args.clone());
        let old = std::mem::replace(self, again);
        std::mem::forget(old);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.join("agent.log")).unwrap_or_default()
    }

    /// How many lines of the agent's log (over its restarts) contain `text`.
    pub fn said(&self, text: &str) -> usize {
        self.log().matches(text).count()
    }

    /// Waits until the agent's log holds at least `count` lines containing `text`.
    pub fn wait_said(&self, text: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.said(text) < count {
            assert!(
                Instant::now() < deadline,
                "waited {timeout:?} for {count} lines saying {text:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the agent's scheduler has decided for every company `n` more times (once
    /// a second): time that provably passed in the agent, rather than a guess of it.
    pub fn wait_passes(&self, n: usize) {
        const PASS: &str = "Decided for every company.";
        self.wait_said(PASS, self.said(PASS) + n, Duration::from_secs(60));
    }

    /// The agent's status file.
    pub fn status(&self) -> Value {
        let path = self.state.join("agent").join("status.json");
        std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    }

    /// One company's status.
    pub fn company(&self, id: &str) -> Value {
        self.status()["companies"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["id"] == id).cloned())
            .unwrap_or(Value::Null)
    }

    /// Waits until `f` holds for the company's status.
    pub fn wait_for(
        &self,
        id: &str,
        what: &str,
        timeout: Duration,
        f: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.company(id);
            if f(&c) {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "waited {timeout:?} for {what}; status: {c}\nlog:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A settings session opened with the agent's ticket: (cookie, token).
    pub fn session(&self) -> Session {
        let url = std::fs::read_to_string(self.state.join("agent").join("settings-url")).unwrap();
        let answer = http("GET", url.trim(), &[], None);
        assert_eq!(answer.status, 303, "{}", answer.body);
        Session::from_redirect(self, &answer)
    }

    /// Edits the saved settings (the agent must be stopped).
    pub fn edit_config(&self, f: impl FnOnce(&mut Value)) {
        let path = self.state.join("agent").join("config.json");
        let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        f(&mut config);
        std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A settings-page session: its cookie and token.
pub struct Session {
    pub base: String,
    pub cookie: String,
    pub token: String,
}

impl Session {
    /// The session a 303 with Set-Cookie opened.
    pub fn from_redirect(agent: &AgentProcess, answer: &Answer) -> Session {
        let cookie = answer
            .header("set-cookie")
            .expect("a session cookie")
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let page = http(
            "GET",
            &format!("{}/settings", agent.base),
            &[("cookie", &cookie)],
            None,
        );
        assert_eq!(page.status, 200, "{}", page.body);
        let token = page
            .body
            .split("const TOKEN = \"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("the page carries its token")
            .to_owned();
        Session {
            base: agent.base.clone(),
            cookie,
            token,
        }
    }

    /// A settings POST as the page sends it.
    pub fn post(&self, path: &str, body: Value) -> Answer {
        http(
            "POST",
            &format!("{}{path}", self.base),
            &[
                ("cookie", &self.cookie),
                ("x-connector-token", &self.token),
                ("origin", &self.base),
                ("content-type", "application/json"),
            ],
            Some(body.to_string()),
        )
    }
}

/// A server on a fresh local store, with an API client.
pub struct World {
    pub dir: tempfile::TempDir,
    pub server: Server,
    pub key: String,
    pub port: u16,
    pub store_dir: PathBuf,
}

impl World {
    /// A `connector run` agent of this world (state in `agent/`), finding the Sage companies
    /// `sages` under its own Sage settings tree.
    pub fn agent(&self, sages: &[&Path]) -> AgentProcess {
        let root = sage_root(&self.dir.path().join("sage-root"), sages);
        AgentProcess::start(
            &self.dir.path().join("agent"),
            &self.server.base,
            self.port,
            &root,
            &[],
        )
    }

    /// A server whose link page sends browsers to the loopback `port`.
    pub fn new(extra: &[&str]) -> World {
        let dir = tempdir();
        let store_dir = dir.path().join("store");
        std::fs::create_dir_all(&store_dir).unwrap();
        let store = connector::publish::file_url(&store_dir);
        let port = free_port();
        let mut args = vec!["--loopback-port".to_owned(), port.to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = Server::start(&dir.path().join("server"), &store, &args);
        let key = server.client("Lender");
        World {
            dir,
            server,
            key,
            port,
            store_dir,
        }
    }

    /// A company made through the API with a redirect URL: (id, linkUrl).
    pub fn company(&self, name: &str, redirect: &str) -> (String, String) {
        let (s, v, _) = self.server.call(
            "POST",
            Some(&self.key),
            "/companies",
            Some(json!({"name": name, "redirectUrl": redirect})),
        );
        assert_eq!(s, 201, "{v}");
        (
            v["id"].as_str().unwrap().to_owned(),
            v["linkUrl"].as_str().unwrap().to_owned(),
        )
    }

    /// The link page's button pressed: the loopback URL it sends the browser to.
    pub fn start_link(&self, link_url: &str) -> String {
        let answer = http(
            "POST",
            &format!("{link_url}/start"),
            &[("content-type", "application/x-www-form-urlencoded")],
            Some(format!("port={}", self.port)),
        );
        assert_eq!(answer.status, 303, "{}", answer.body);
        answer.header("location").unwrap()
    }
}

/// Query parameter `name` of a URL.
pub fn param(url: &str, name: &str) -> String {
    url.split(['?', '&'])
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {url}"))
        .to_owned()
}

/// Links a company over HTTP the way the browser does, sets its Sage company up and waits for
/// the first sync: returns the settings session.
pub fn link_and_set_up(
    world: &World,
    agent: &AgentProcess,
    id: &str,
    link_url: &str,
    sage: &Company,
) -> Session {
    let loopback = world.start_link(link_url);
    let answer = http("GET", &loopback, &[], None);
    assert_eq!(answer.status, 303, "{}\n{}", answer.body, agent.log());
    let session = Session::from_redirect(agent, &answer);
    let confirm = session.post(
        "/settings/confirm",
        json!({"company": id, "path": sage.dir.display().to_string(), "user": "", "password": ""}),
    );
    assert_eq!(confirm.json()["ok"], true, "{}", confirm.body);
    agent.wait_for(id, "the first sync", Duration::from_secs(60), |c| {
        c["state"] == "up_to_date"
    });
    session
}

/// Time and count of the company's syncs so far.
pub fn syncs_started(agent: &AgentProcess, id: &str) -> u64 {
    agent.company(id)["syncsStarted"].as_u64().unwrap_or(0)
}
