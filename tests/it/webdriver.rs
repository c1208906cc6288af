//! A minimal W3C WebDriver client over HTTP, driving a real headless Chromium through Debian's
//! `chromedriver`, and a tiny HTTP server for stand-in pages (an API client's web page).
//! WebDriver errors panic with the command, the status and the driver's answer: these are
//! test helpers.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The W3C element key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Whether Chromium and its driver are installed (`make test` installs them).
pub fn available() -> bool {
    Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists()
}

/// A headless Chromium session; the session and the driver end on drop.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
    log: PathBuf,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn send(method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
    runtime().block_on(async {
        let client = reqwest::Client::new();
        let mut req = client
            .request(method.parse().unwrap(), url)
            .timeout(Duration::from_secs(120));
        if let Some(body) = body {
            req = req.json(&body);
        }
        match req.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                (status, serde_json::from_str(&text).unwrap_or(Value::Null))
            }
            Err(e) => (0, json!({"error": e.to_string()})),
        }
    })
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session.
    pub fn start() -> Browser {
        assert!(
            available(),
            "install chromium and chromium-driver (make test does)"
        );
        let profile = tempfile::Builder::new()
            .prefix("connector-chromium-")
            .tempdir()
            .unwrap();
        let port = crate::desktop::free_port();
        let log = profile.path().join("chromedriver.log");
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, v) = send("GET", &format!("{base}/status"), None);
            if status == 200 && v["value"]["ready"] == true {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,900", "--no-first-run",
                         format!("--user-data-dir={}", profile.path().join("profile").display())],
            }
        }}});
        let (status, v) = send("POST", &format!("{base}/session"), Some(caps));
        assert_eq!(
            status,
            200,
            "new session: {v}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let session = v["value"]["sessionId"].as_str().unwrap().to_owned();
        Browser {
            driver,
            base,
            session,
            _profile: profile,
            log,
        }
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let (status, v) = send(method, &url, body.clone());
        assert_eq!(status, 200, "WebDriver {method} {path} {body:?}: {v}");
        v["value"].clone()
    }

    fn try_cmd(&self, method: &str, path: &str, body: Option<Value>) -> Option<Value> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let (status, v) = send(method, &url, body);
        (status == 200).then(|| v["value"].clone())
    }

    /// Navigates.
    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    /// The current URL.
    pub fn url(&self) -> String {
        self.cmd("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The page title.
    pub fn title(&self) -> String {
        self.cmd("GET", "/title", None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The page source.
    pub fn source(&self) -> String {
        self.cmd("GET", "/source", None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The element matching a CSS selector, if any.
    pub fn try_find(&self, css: &str) -> Option<Element<'_>> {
        let v = self.try_cmd(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        )?;
        Some(Element {
            browser: self,
            id: v[ELEMENT].as_str()?.to_owned(),
        })
    }

    /// The element matching a CSS selector (panics with the page when missing).
    pub fn find(&self, css: &str) -> Element<'_> {
        self.try_find(css).unwrap_or_else(|| {
            let source: String = self.source().chars().take(2000).collect();
            panic!("no element {css} on {}:\n{source}", self.url())
        })
    }

    /// Waits for an element.
    pub fn wait_for(&self, css: &str, timeout: Duration) -> Element<'_> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.try_find(css) {
                return e;
            }
            if Instant::now() > deadline {
                return self.find(css);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `f` holds.
    pub fn wait_until(&self, what: &str, timeout: Duration, f: impl Fn(&Browser) -> bool) {
        let deadline = Instant::now() + timeout;
        while !f(self) {
            assert!(
                Instant::now() < deadline,
                "waited {timeout:?} for {what} on {}: {}",
                self.url(),
                self.source().chars().take(2000).collect::<String>()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the URL satisfies `f`; returns it.
    pub fn wait_for_url(&self, f: impl Fn(&str) -> bool, timeout: Duration) -> String {
        self.wait_until("the URL", timeout, |b| f(&b.url()));
        self.url()
    }

    /// Runs a script; returns its value.
    pub fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
    }

    /// What the page logged to its console since the last call (each with `level`, `message`).
    pub fn console_log(&self) -> Vec<Value> {
        self.cmd("POST", "/se/log", Some(json!({"type": "browser"})))
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Saves a PNG screenshot.
    pub fn screenshot(&self, path: &Path) {
        use base64::Engine;
        let data = self.cmd("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = send(
            "DELETE",
            &format!("{}/session/{}", self.base, self.session),
            None,
        );
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = &self.log;
    }
}

/// An element of the page.
pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

impl Element<'_> {
    fn path(&self, what: &str) -> String {
        format!("/element/{}{what}", self.id)
    }

    /// Clicks it.
    pub fn click(&self) {
        self.browser
            .cmd("POST", &self.path("/click"), Some(json!({})));
    }

    /// Types into it.
    pub fn send_keys(&self, text: &str) {
        self.browser
            .cmd("POST", &self.path("/value"), Some(json!({ "text": text })));
    }

    /// Empties it.
    pub fn clear(&self) {
        self.browser
            .cmd("POST", &self.path("/clear"), Some(json!({})));
    }

    /// Its visible text.
    pub fn text(&self) -> String {
        self.browser
            .cmd("GET", &self.path("/text"), None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// An attribute.
    pub fn attribute(&self, name: &str) -> Option<String> {
        self.browser
            .cmd("GET", &self.path(&format!("/attribute/{name}")), None)
            .as_str()
            .map(str::to_owned)
    }

    /// A DOM property.
    pub fn property(&self, name: &str) -> Value {
        self.browser
            .cmd("GET", &self.path(&format!("/property/{name}")), None)
    }

    /// Chooses the option of a `<select>` with this value (as a user picking it).
    pub fn select_by_value(&self, value: &str) {
        self.click();
        let options = self.browser.cmd(
            "POST",
            &self.path("/elements"),
            Some(json!({"using": "css selector", "value": "option"})),
        );
        for option in options.as_array().cloned().unwrap_or_default() {
            let element = Element {
                browser: self.browser,
                id: option[ELEMENT].as_str().unwrap().to_owned(),
            };
            if element.property("value").as_str() == Some(value) {
                element.click();
                assert_eq!(self.property("value").as_str(), Some(value));
                return;
            }
        }
        panic!("no option {value:?} in the select");
    }

    /// Whether it is shown.
    pub fn is_displayed(&self) -> bool {
        self.browser.cmd("GET", &self.path("/displayed"), None) == json!(true)
    }
}

/// What a page handler answers: status, headers, body.
pub type Page = (u16, Vec<(String, String)>, String);

/// A tiny HTTP/1.1 server on 127.0.0.1 for stand-in pages; stops on drop.
pub struct PageServer {
    base: String,
    stop: Arc<AtomicBool>,
}

impl PageServer {
    /// Serves `handler(method, path_and_query, body)`.
    pub fn start(handler: impl Fn(&str, &str, &str) -> Page + Send + Sync + 'static) -> PageServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut reader = BufReader::new(stream);
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).is_err() || line.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':')
                        && k.eq_ignore_ascii_case("content-length")
                    {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let mut parts = request_line.split_whitespace();
                let method = parts.next().unwrap_or("GET").to_owned();
                let path = parts.next().unwrap_or("/").to_owned();
                let (status, headers, body) =
                    handler(&method, &path, &String::from_utf8_lossy(&body));
                let mut stream = reader.into_inner();
                let mut head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                    body.len()
                );
                for (k, v) in headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str("\r\n");
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(body.as_bytes());
            }
        });
        PageServer { base, stop }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        self.base.clone()
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
