//! The agent (`connector run`): one long-running process per Windows user that links
//! companies, keeps their settings, schedules their syncs and talks to the server.
//!
//! Takes the state folder and the server's URL; runs until stopped:
//! - [`local_web`]: the loopback listener (`127.0.0.1:PORT`): the link hand-over from the
//!   server's link page, and the settings page (Sage company, login, Test, Confirm, sync now,
//!   pause).
//! - per company, a **check-in** loop ([`checkin`]): a long poll that sends the company's
//!   status and gets queued work (a sync requested through the API starts within seconds),
//!   configuration, and rotated credentials. A revoked device stops its company for good.
//! - the **scheduler**: once a second (and when woken), [`schedule::decide`] for each company;
//!   a sync runs as a child process (`connector sync … --server`), so a crash inside the ODBC
//!   driver or DuckDB ends that sync, not the agent. Its exit status and `--json` summary
//!   become the company's history and reason code, reported to the server.
//!
//! The agent never runs ODBC or DuckDB itself; it never holds a store credential; the device
//! credentials and Sage passwords live in the [`secrets`] store, never in a file in clear
//! (except the 0600 fallback file where no OS store exists) and never in a log.

pub mod autostart;
pub mod checkin;
pub mod config;
pub mod control;
pub mod discovery;
pub mod doctor;
pub mod local_web;
pub mod schedule;
pub mod secrets;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::protocol::{CheckIn, CompanyState, Reason, SyncResult};
use checkin::{CallError, ServerClient};
use config::{AgentConfig, AgentStatus, CompanyConfig, CompanyStatus};
use secrets::SecretStore;

/// Exit status of `connector sync` when the snapshot waits in the outbox.
pub const EXIT_WAITING: i32 = 75;
/// Windows' `CREATE_NO_WINDOW`: the agent's and the tray's children open no console window.
pub const CREATE_NO_WINDOW: u32 = 0x0800_0000;

/// A child process of the agent: no console window on Windows.
pub fn child_command(exe: &std::path::Path) -> tokio::process::Command {
    #[allow(unused_mut)]
    let mut cmd = tokio::process::Command::new(exe);
    #[cfg(windows)]
    cmd.creation_flags(CREATE_NO_WINDOW);
    cmd
}

/// Longest run of `connector doctor` from the agent.
const DIAGNOSE_TIMEOUT: Duration = Duration::from_secs(180);
/// Environment variable through which the agent hands the Sage password to its sync child.
pub const PASSWORD_ENV: &str = "CONNECTOR_SAGE_PASSWORD";

/// How to run the agent.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The state folder.
    pub state_dir: PathBuf,
    /// The server's base URL.
    pub server: String,
    /// The loopback port (0: any free port, for tests).
    pub port: u16,
    /// The ODBC connection string template (see [`discovery::connection_string`]).
    pub odbc_template: String,
    /// Where Sage's settings folders are (see [`discovery::default_root`]).
    pub sage_root: PathBuf,
    /// Longest long poll at check-in.
    pub checkin_wait: Duration,
    /// The `connector` executable the sync children run.
    pub exe: PathBuf,
    /// Seconds the sync child retries an unreachable server before leaving the snapshot in
    /// the outbox.
    pub publish_timeout_secs: u64,
}

/// What runs now for a company (not saved).
#[derive(Debug, Default, Clone)]
struct Running {
    syncing: bool,
    /// The doctor runs for it after a failed sync: no sync starts meanwhile (its Sage login
    /// would meet the doctor's).
    diagnosing: bool,
    /// A sync asked for: the API's request id, or `local`.
    requested: Option<String>,
    syncs_started: u64,
    started_at: Option<String>,
    started_because: Option<String>,
    next: Option<(String, String)>,
}

/// A browser session of the settings page.
#[derive(Debug, Clone)]
struct Session {
    csrf: String,
}

/// The agent's shared state.
pub struct Agent {
    /// How it runs.
    pub options: AgentOptions,
    config: Mutex<AgentConfig>,
    running: Mutex<HashMap<String, Running>>,
    secrets: Box<dyn SecretStore>,
    server: ServerClient,
    wake: tokio::sync::Notify,
    sessions: Mutex<HashMap<String, Session>>,
    /// Opens a settings session (`/open?ticket=`): written to `STATE/agent/settings-url`.
    ticket: String,
    port: Mutex<u16>,
    reachable: std::sync::atomic::AtomicBool,
    /// Companies whose check-in loop runs.
    checking_in: Mutex<std::collections::HashSet<String>>,
    /// One writer of `status.json` at a time.
    status_file: Mutex<()>,
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn parse_time(s: &Option<String>) -> Option<DateTime<Utc>> {
    s.as_deref()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|d| d.with_timezone(&Utc))
}

/// The name this PC is shown under at the server.
pub fn device_name() -> String {
    ["COMPUTERNAME", "HOSTNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "this PC".to_owned())
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The settings could not be read.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The loopback port is taken.
    #[error(
        "cannot listen on 127.0.0.1:{port}: {source} (is another connector running? choose another --port)"
    )]
    Listen {
        /// The port.
        port: u16,
        /// The error.
        source: std::io::Error,
    },
}

impl Agent {
    /// Loads the settings and opens the secret store.
    pub fn new(options: AgentOptions) -> Result<Arc<Agent>, AgentError> {
        let config = AgentConfig::load(&options.state_dir)?;
        let secrets = secrets::open(&options.state_dir);
        let server = ServerClient::new(&options.server);
        Ok(Arc::new(Agent {
            config: Mutex::new(config),
            running: Mutex::default(),
            secrets,
            server,
            wake: tokio::sync::Notify::new(),
            sessions: Mutex::default(),
            ticket: crate::server::control::random_token(24),
            port: Mutex::new(options.port),
            reachable: std::sync::atomic::AtomicBool::new(false),
            checking_in: Mutex::default(),
            status_file: Mutex::default(),
            options,
        }))
    }

    fn config(&self) -> std::sync::MutexGuard<'_, AgentConfig> {
        self.config.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes one company's settings, saves them, and refreshes the status file.
    fn update(&self, company: &str, f: impl FnOnce(&mut CompanyConfig)) {
        {
            let mut config = self.config();
            if let Some(c) = config.company_mut(company) {
                f(c);
            }
            if let Err(e) = config.save(&self.options.state_dir) {
                tracing::error!(error = %e, "Could not save the agent's settings.");
            }
        }
        self.write_status();
    }

    /// The loopback origin (`http://127.0.0.1:PORT`).
    pub fn origin(&self) -> String {
        format!(
            "http://127.0.0.1:{}",
            *self.port.lock().unwrap_or_else(|e| e.into_inner())
        )
    }

    /// A company's state now.
    fn state_of(&self, c: &CompanyConfig, r: Option<&Running>) -> CompanyState {
        if c.revoked {
            CompanyState::Revoked
        } else if r.is_some_and(|r| r.syncing) {
            CompanyState::Syncing
        } else if c.moved_to.is_some() {
            CompanyState::Moved
        } else if c.setup.is_none() {
            CompanyState::NeedsSetup
        } else if parse_time(&c.paused_until).is_some_and(|t| t > Utc::now()) {
            CompanyState::Paused
        } else if c.last_error.is_some() {
            CompanyState::Failing
        } else if c.last_success.is_some() {
            CompanyState::UpToDate
        } else {
            CompanyState::Ready
        }
    }

    /// What the agent shows now.
    pub fn status(&self) -> AgentStatus {
        let config = self.config().clone();
        let running = self.running().clone();
        let companies = config
            .companies
            .iter()
            .map(|c| {
                let r = running.get(&c.id);
                let state = self.state_of(c, r);
                CompanyStatus {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    state,
                    sage_company: c.setup.as_ref().map(|s| s.sage_company_name.clone()),
                    last_success: c.last_success.clone(),
                    last_error: c.last_error,
                    advice: c.last_error.map(|r| r.advice().to_owned()),
                    last_message: c.last_message.clone(),
                    next_sync_at: r.and_then(|r| r.next.as_ref().map(|n| n.0.clone())),
                    waiting_because: r.and_then(|r| r.next.as_ref().map(|n| n.1.clone())),
                    syncs_started: r.map_or(0, |r| r.syncs_started),
                    sync_started_at: r.and_then(|r| r.started_at.clone()),
                    sync_started_because: r.and_then(|r| r.started_because.clone()),
                    data_folder: c.setup.as_ref().map(|s| s.accdata.clone()),
                    moved_to: c.moved_to.as_ref().map(|s| s.accdata.clone()),
                    problems: c.problems.clone(),
                    return_url: c.redirect_url.as_deref().map(|u| {
                        crate::server::link::redirect_with(
                            u,
                            &c.id,
                            if state == CompanyState::UpToDate {
                                "linked"
                            } else {
                                "failed"
                            },
                        )
                    }),
                }
            })
            .collect();
        AgentStatus {
            port: *self.port.lock().unwrap_or_else(|e| e.into_inner()),
            server: self.options.server.clone(),
            server_reachable: self.reachable.load(std::sync::atomic::Ordering::Relaxed),
            pid: std::process::id(),
            sage_root: self.options.sage_root.display().to_string(),
            odbc_template: self.options.odbc_template.clone(),
            start_at_logon: config.start_at_logon,
            companies,
        }
    }

    fn write_status(&self) {
        let _writing = self.status_file.lock().unwrap_or_else(|e| e.into_inner());
        let status = self.status();
        let path = AgentStatus::path(&self.options.state_dir);
        if let Err(e) = config::write_json(
            &path,
            &serde_json::to_vec_pretty(&status).expect("status serialises"),
        ) {
            tracing::warn!(error = %e, "Could not write the status file.");
        }
    }

    /// Queues a sync of a company (the API's request id, or `local`) and wakes the scheduler.
    pub fn request_sync(&self, company: &str, request: &str) {
        self.running()
            .entry(company.to_owned())
            .or_default()
            .requested
            .get_or_insert_with(|| request.to_owned());
        self.wake.notify_one();
    }

    /// Adds (or replaces) a linked company and stores its credential.
    pub fn add_linked(self: &Arc<Self>, linked: &crate::protocol::Linked) -> Result<(), String> {
        self.secrets
            .set(
                &config::device_secret(&linked.company_id),
                &linked.credential,
            )
            .map_err(|e| e.to_string())?;
        {
            let mut config = self.config();
            let fresh = CompanyConfig::linked(linked);
            match config.company_mut(&linked.company_id) {
                // Linked again (after a revocation): the Sage settings stay.
                Some(c) => {
                    c.device_id = fresh.device_id;
                    c.name = fresh.name;
                    c.redirect_url = fresh.redirect_url;
                    c.revoked = false;
                    c.last_error = None;
                    c.last_message = None;
                }
                None => config.companies.push(fresh),
            }
            config
                .save(&self.options.state_dir)
                .map_err(|e| e.to_string())?;
        }
        tracing::info!(company = %linked.company_id, device = %linked.device_id, "Linked a company.");
        self.write_status();
        self.start_checkin(&linked.company_id);
        Ok(())
    }

    fn credential(&self, company: &str) -> Option<String> {
        match self.secrets.get(&config::device_secret(company)) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(company, error = %e, "Could not read the device credential.");
                None
            }
        }
    }

    /// Starts a company's check-in loop unless it runs.
    fn start_checkin(self: &Arc<Self>, company: &str) {
        if !self
            .checking_in
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(company.to_owned())
        {
            return;
        }
        let agent = self.clone();
        let company = company.to_owned();
        tokio::spawn(async move {
            agent.checkin_loop(&company).await;
            agent
                .checking_in
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&company);
        });
    }

    fn checkin_status(&self, company: &str) -> Option<CheckIn> {
        let status = self.status();
        let c = status.companies.into_iter().find(|c| c.id == company)?;
        Some(CheckIn {
            connector_version: env!("CARGO_PKG_VERSION").to_owned(),
            os: std::env::consts::OS.to_owned(),
            state: Some(c.state),
            last_sync_at: c.sync_started_at,
            last_success_at: c.last_success,
            last_error: c.last_error,
            next_sync_at: c.next_sync_at,
            problems: c.problems,
        })
    }

    /// One company's check-in: a long poll, again and again, until the device is revoked.
    async fn checkin_loop(self: &Arc<Self>, company: &str) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let revoked = self
                .config()
                .companies
                .iter()
                .find(|c| c.id == company)
                .is_none_or(|c| c.revoked);
            if revoked {
                return;
            }
            let Some(credential) = self.credential(company) else {
                tracing::error!(
                    company,
                    "No device credential is stored for this company: link it again from the app."
                );
                self.mark_revoked(company, "no device credential is stored on this PC");
                return;
            };
            let Some(status) = self.checkin_status(company) else {
                return;
            };
            match self
                .server
                .checkin(company, &credential, &status, self.options.checkin_wait)
                .await
            {
                Ok(answer) => {
                    backoff = Duration::from_secs(1);
                    let was = self
                        .reachable
                        .swap(true, std::sync::atomic::Ordering::Relaxed);
                    if let Some(new) = &answer.credential {
                        match self.secrets.set(&config::device_secret(company), new) {
                            Ok(()) => {
                                tracing::info!(company, "Stored the rotated device credential.")
                            }
                            Err(e) => {
                                tracing::error!(company, error = %e, "Could not store the rotated device credential; the current one keeps working.")
                            }
                        }
                    }
                    if answer.sync_every_secs > 0 {
                        let every = answer.sync_every_secs;
                        let changed = self
                            .config()
                            .companies
                            .iter()
                            .any(|c| c.id == company && c.every_secs != every);
                        if changed {
                            self.update(company, |c| c.every_secs = every);
                        }
                    }
                    if let Some(request) = &answer.sync_requested {
                        tracing::info!(company, request = %request, "The server asked for a sync.");
                        self.request_sync(company, request);
                    }
                    // Back online with a snapshot waiting: publish it now.
                    let offline = self
                        .config()
                        .companies
                        .iter()
                        .any(|c| c.id == company && c.last_error == Some(Reason::Offline));
                    if offline {
                        tracing::info!(
                            company,
                            "The server answers again; sending the waiting snapshot."
                        );
                        self.request_sync(company, "local");
                    }
                    if !was {
                        self.write_status();
                    }
                    // A little jitter before the next long poll, so that connectors do not
                    // all call at the same instant after a server restart.
                    let jitter = rand::random_range(0..500u64);
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                }
                Err(CallError::Revoked { detail, .. }) => {
                    tracing::error!(company, detail = %detail, "The server says this connector was revoked; syncing this company stops. Link it again from the app.");
                    self.mark_revoked(company, &detail);
                    return;
                }
                Err(e) => {
                    if self
                        .reachable
                        .swap(false, std::sync::atomic::Ordering::Relaxed)
                    {
                        self.write_status();
                    }
                    tracing::warn!(company, error = %e, retry_in = backoff.as_secs(), "Check-in failed; trying again.");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    fn mark_revoked(&self, company: &str, detail: &str) {
        let _ = self.secrets.delete(&config::device_secret(company));
        self.update(company, |c| {
            c.revoked = true;
            c.last_error = Some(Reason::DeviceRevoked);
            c.last_message = Some(detail.to_owned());
        });
    }

    /// The scheduler: decides for every company once a second, or when woken.
    async fn schedule_loop(self: &Arc<Self>) {
        for pass in 1u64.. {
            let companies = self.config().companies.clone();
            let company_count = companies.len();
            let mut changed = false;
            for c in companies {
                // A moved company waits for the user to confirm where its data is now.
                if c.revoked || c.setup.is_none() || c.moved_to.is_some() {
                    continue;
                }
                let (syncing, requested) = {
                    let running = self.running();
                    let r = running.get(&c.id);
                    (
                        r.is_some_and(|r| r.syncing || r.diagnosing),
                        r.and_then(|r| r.requested.clone()),
                    )
                };
                if syncing {
                    continue;
                }
                let schedule = schedule::Schedule {
                    every: chrono::Duration::seconds(c.every_secs.max(60) as i64),
                    quiet: c.quiet.iter().filter_map(|q| q.parse().ok()).collect(),
                    paused_until: parse_time(&c.paused_until),
                };
                let history = schedule::History {
                    last_success: parse_time(&c.last_success),
                    last_failure: parse_time(&c.last_failure),
                    failures_in_a_row: c.failures_in_a_row,
                };
                let utc = Utc::now();
                let offset = *chrono::Local::now().offset();
                let decision = schedule::decide(
                    &schedule::Now { utc, offset },
                    &schedule,
                    &history,
                    requested.is_some(),
                );
                match decision {
                    schedule::Decision::Run(why) => {
                        let request = {
                            let mut running = self.running();
                            let r = running.entry(c.id.clone()).or_default();
                            r.syncing = true;
                            r.syncs_started += 1;
                            r.started_at = Some(now());
                            r.started_because = Some(why.as_str().to_owned());
                            r.next = None;
                            r.requested.take()
                        };
                        tracing::info!(company = %c.id, because = why.as_str(), "Starting a sync.");
                        changed = true;
                        let agent = self.clone();
                        tokio::spawn(async move {
                            agent.run_sync(&c, request).await;
                        });
                    }
                    schedule::Decision::Wait { until, because } => {
                        let next = (
                            until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                            because.as_str().to_owned(),
                        );
                        let mut running = self.running();
                        let r = running.entry(c.id.clone()).or_default();
                        if r.next.as_ref() != Some(&next) {
                            r.next = Some(next);
                            changed = true;
                        }
                    }
                }
            }
            if changed {
                self.write_status();
            }
            tracing::debug!(
                pass,
                companies = company_count,
                "Decided for every company."
            );
            let _ = tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await;
        }
    }

    /// Runs one sync as a child process and records its outcome.
    async fn run_sync(self: &Arc<Self>, c: &CompanyConfig, request: Option<String>) {
        let started_at = now();
        let outcome = self.sync_child(c).await;
        let finished_at = now();
        let (ok, reason, message, snapshot_id) = outcome;
        self.update(&c.id, |cfg| {
            if ok {
                cfg.last_success = Some(finished_at.clone());
                cfg.last_failure = None;
                cfg.failures_in_a_row = 0;
                cfg.last_error = None;
                cfg.last_message = None;
            } else {
                cfg.last_failure = Some(finished_at.clone());
                cfg.failures_in_a_row += 1;
                cfg.last_error = reason;
                cfg.last_message = message.clone();
            }
        });
        if ok {
            self.update(&c.id, |cfg| cfg.problems.clear());
        }
        let diagnose = !ok && reason != Some(Reason::DeviceRevoked);
        {
            let mut running = self.running();
            let r = running.entry(c.id.clone()).or_default();
            r.syncing = false;
            r.diagnosing = diagnose;
        }
        self.write_status();
        if diagnose {
            // Why, in the doctor's words: sent at the next check-in; a company found in
            // another folder waits for the user's confirmation.
            if let Err(e) = self.diagnose(Some(&c.id)).await {
                tracing::warn!(company = %c.id, error = %e, "Could not run the connector's checks after a failed sync.");
            }
            self.running().entry(c.id.clone()).or_default().diagnosing = false;
        }
        if ok {
            tracing::info!(company = %c.id, snapshot = ?snapshot_id, "The sync published.");
        } else {
            tracing::warn!(company = %c.id, reason = ?reason, message = ?message, "The sync failed.");
        }
        if reason == Some(Reason::DeviceRevoked) {
            self.mark_revoked(&c.id, message.as_deref().unwrap_or("revoked"));
        } else if let Some(credential) = self.credential(&c.id) {
            let result = SyncResult {
                request_id: request.filter(|r| r != "local"),
                ok,
                snapshot_id,
                reason,
                message,
                started_at,
                finished_at,
            };
            if let Err(e) = self.server.report(&c.id, &credential, &result).await {
                tracing::warn!(company = %c.id, error = %e, "Could not report the sync's outcome to the server.");
            }
        }
        self.wake.notify_one();
    }

    /// Runs `connector doctor` (every company, or one) in a child process, keeps what it
    /// found per company (sent at check-in) and a moved company's new folder (state `moved`),
    /// and returns its report as JSON.
    pub async fn diagnose(&self, company: Option<&str>) -> Result<serde_json::Value, String> {
        // what each company was when the checks began: a result that a later sync or a new
        // folder made stale is not kept
        let began: HashMap<String, (Option<String>, Option<String>)> = self
            .config()
            .companies
            .iter()
            .map(|c| {
                (
                    c.id.clone(),
                    (
                        c.setup.as_ref().map(|s| s.accdata.clone()),
                        c.last_success.clone(),
                    ),
                )
            })
            .collect();
        let mut cmd = child_command(&self.options.exe);
        cmd.arg("doctor")
            .arg("--state-dir")
            .arg(&self.options.state_dir)
            .arg("--json")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(id) = company {
            cmd.args(["--company", id]);
        }
        // a probe hanging on a dead network share must not hold the agent
        let output = tokio::time::timeout(DIAGNOSE_TIMEOUT, cmd.output())
            .await
            .map_err(|_| {
                format!(
                    "the checks took longer than {} s and were stopped",
                    DIAGNOSE_TIMEOUT.as_secs()
                )
            })?
            .map_err(|e| format!("could not start {}: {e}", self.options.exe.display()))?;
        let report: doctor::Report = serde_json::from_slice(&output.stdout).map_err(|e| {
            format!(
                "the checks stopped unexpectedly (exit status {}): {e}",
                output.status
            )
        })?;
        let ids: Vec<String> = self
            .config()
            .companies
            .iter()
            .map(|c| c.id.clone())
            .collect();
        for id in ids.iter().filter(|id| company.is_none_or(|c| c == *id)) {
            let problems = report.problems_for(id);
            let moved_to = report
                .findings
                .iter()
                .find(|f| f.company.as_deref() == Some(id) && f.moved_to.is_some())
                .and_then(|f| f.moved_to.clone());
            if let Some(to) = &moved_to {
                tracing::warn!(company = %id, to = %to.accdata, "The Sage data moved: waiting for the user to confirm the new folder.");
            }
            let checked_folder = report
                .findings
                .iter()
                .any(|f| f.company.as_deref() == Some(id) && f.check == "data_folder");
            self.update(id, |cfg| {
                let now = (
                    cfg.setup.as_ref().map(|s| s.accdata.clone()),
                    cfg.last_success.clone(),
                );
                if began.get(id.as_str()) != Some(&now) {
                    return;
                }
                cfg.problems = problems;
                // where the doctor looked: the move it found, or none (the folder is back)
                if checked_folder {
                    cfg.moved_to = moved_to;
                }
            });
        }
        self.write_status();
        serde_json::to_value(&report).map_err(|e| e.to_string())
    }

    /// The user's answer about a moved company: take the new folder (same company, same
    /// records; a sync starts at once) or not (the company stays failing until set up again).
    pub fn confirm_moved(&self, company: &str, accept: bool) -> Result<String, String> {
        let mut taken = None;
        {
            let mut config = self.config();
            let c = config
                .company_mut(company)
                .ok_or_else(|| format!("no company {company} on this connector"))?;
            let to = c
                .moved_to
                .take()
                .ok_or_else(|| format!("the Sage data of {company} has not moved"))?;
            c.problems.clear();
            if accept {
                taken = Some(to.accdata.clone());
                c.setup = Some(to);
                c.last_error = None;
                c.last_message = None;
            } else {
                // not asked about that folder again
                c.declined_moves.push(to.accdata);
                c.last_error = Some(Reason::DataFolderNotFound);
            }
            config
                .save(&self.options.state_dir)
                .map_err(|e| e.to_string())?;
        }
        self.write_status();
        match taken {
            Some(folder) => {
                tracing::info!(company, folder = %folder, "The user confirmed the moved Sage data; syncing from the new folder.");
                self.request_sync(company, "local");
                Ok(folder)
            }
            None => {
                tracing::info!(
                    company,
                    "The user said the folder found is not their company."
                );
                Ok(String::new())
            }
        }
    }

    /// Makes the connector start at logon (or not), as the user answered, and keeps the
    /// answer. The entry starts the agent the way this one was started.
    pub fn set_start_at_logon(&self, on: bool) -> Result<(), String> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let (exe, args) = autostart::command(&self.options.exe, &args);
        autostart::set(&exe, &args, on).map_err(|e| e.to_string())?;
        let mut config = self.config();
        config.start_at_logon = Some(on);
        config
            .save(&self.options.state_dir)
            .map_err(|e| e.to_string())?;
        drop(config);
        self.write_status();
        Ok(())
    }

    /// `connector sync` for a company in a child process: (ok, reason, message, snapshot).
    async fn sync_child(
        &self,
        c: &CompanyConfig,
    ) -> (bool, Option<Reason>, Option<String>, Option<String>) {
        let Some(setup) = &c.setup else {
            return (false, Some(Reason::Other), Some("not set up".into()), None);
        };
        let summary =
            config::agent_dir(&self.options.state_dir).join(format!("sync-{}.json", c.id));
        let _ = std::fs::remove_file(&summary);
        let mut cmd = child_command(&self.options.exe);
        cmd.args([
            "sync",
            "--odbc",
            &setup.odbc,
            "--company",
            &c.id,
            "--state-dir",
        ])
        .arg(&self.options.state_dir)
        .args(["--server", &self.options.server, "--json"])
        .arg(&summary)
        .args([
            "--store-timeout",
            &self.options.publish_timeout_secs.to_string(),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
        if let Some(user) = &setup.user {
            cmd.args(["--user", user]);
        }
        if !setup.sage_company_id.is_empty() {
            cmd.args(["--sage-company-id", &setup.sage_company_id]);
        }
        match self.secrets.get(&config::sage_secret(&c.id)) {
            Ok(Some(password)) => {
                cmd.args(["--password-env", PASSWORD_ENV]);
                cmd.env(PASSWORD_ENV, password);
            }
            Ok(None) => {}
            Err(e) => {
                return (false, Some(Reason::LocalStorage), Some(e.to_string()), None);
            }
        }
        let output = match cmd.output().await {
            Ok(o) => o,
            Err(e) => {
                return (
                    false,
                    Some(Reason::Crashed),
                    Some(format!(
                        "could not start {}: {e}",
                        self.options.exe.display()
                    )),
                    None,
                );
            }
        };
        let report: Option<serde_json::Value> = std::fs::read(&summary)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let snapshot = report
            .as_ref()
            .and_then(|r| r["snapshot_id"].as_str().map(str::to_owned));
        match output.status.code() {
            Some(0) => (true, None, None, snapshot),
            Some(EXIT_WAITING) => (
                false,
                Some(Reason::Offline),
                report
                    .as_ref()
                    .and_then(|r| r["waiting_because"].as_str().map(str::to_owned)),
                snapshot,
            ),
            Some(_) => {
                let reason = report
                    .as_ref()
                    .and_then(|r| r["reason"].as_str())
                    .and_then(Reason::from_code)
                    .unwrap_or(Reason::Other);
                let message = report
                    .as_ref()
                    .and_then(|r| r["message"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| {
                        String::from_utf8_lossy(&output.stderr)
                            .lines()
                            .rfind(|l| l.starts_with("error:"))
                            .unwrap_or("the sync failed")
                            .to_owned()
                    });
                (false, Some(reason), Some(message), None)
            }
            None => (
                false,
                Some(Reason::Crashed),
                Some("the sync process was killed or crashed".into()),
                None,
            ),
        }
    }
}

/// Runs the agent until SIGINT/SIGTERM.
pub async fn run(agent: Arc<Agent>) -> Result<(), AgentError> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", agent.options.port))
        .await
        .map_err(|source| AgentError::Listen {
            port: agent.options.port,
            source,
        })?;
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    *agent.port.lock().unwrap_or_else(|e| e.into_inner()) = port;
    let settings_url = format!("http://127.0.0.1:{port}/open?ticket={}", agent.ticket);
    let url_file = config::agent_dir(&agent.options.state_dir).join("settings-url");
    if let Err(e) = config::write_private(&url_file, settings_url.as_bytes()) {
        tracing::warn!(file = %url_file.display(), error = %e, "Could not write the settings address.");
    }
    tracing::info!(port, server = %agent.options.server, secret_store = %agent.secrets.describe(), "The connector agent is running.");
    // for whoever started it (tests, the tray); nobody may be reading any more (a restart)
    {
        use std::io::Write;
        let mut out = std::io::stdout();
        let _ = writeln!(out, "listening on http://127.0.0.1:{port}");
        let _ = out.flush();
    }
    agent.write_status();
    let companies: Vec<String> = agent
        .config()
        .companies
        .iter()
        .filter(|c| !c.revoked)
        .map(|c| c.id.clone())
        .collect();
    for company in companies {
        agent.start_checkin(&company);
    }
    let scheduler = {
        let agent = agent.clone();
        tokio::spawn(async move { agent.schedule_loop().await })
    };
    let app = local_web::router(agent.clone());
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(crate::server::shutdown_signal())
        .await;
    scheduler.abort();
    tracing::info!("The connector agent stopped.");
    served.map_err(|source| AgentError::Listen { port, source })
}
