//! `connector doctor`: "my data isn't updating", answered. Runs the checks below in order and
//! says, for each, what it found and what to do, in words a Sage user follows; the failures
//! carry the same [`Reason`] codes as a failed sync, so the agent sends them at check-in and
//! the API client reads them in `dataStatus`.
//!
//! Takes the state folder (the agent's `config.json` and `status.json`) and the secret store;
//! produces a [`Report`]. The checks, in order:
//! 1. `agent`: the agent answers on its loopback port; `start_at_logon`: it starts at logon.
//! 2. `server`: the server answers `/healthz` (a proxy or firewall: `offline`; a certificate
//!    refused: `tls_failed`), and its clock (`Date`) is within [`MAX_CLOCK_SKEW_SECS`].
//! 3. Per company: `credential` (the device credential is there and the server takes it);
//!    `data_folder` (the Sage data folder exists and this process can read it; when it is
//!    gone, every `COMPANY` file of every Sage version is searched for the same company by
//!    `COMPANY.COMPANYID`: `data_moved` with where, else `data_folder_not_found`; a drive
//!    letter other than C: is a warning, `mapped_drive`); `odbc_driver` (the connection's
//!    driver is installed for this process, and of this process's bitness); `sage_login`
//!    (Sage takes the login, the company is not locked, and it is still the same company);
//!    `disk_space` (free space for the staging store); `last_sync` (the last sync's result).
//!
//! ODBC runs here, in the doctor's own process: the agent runs the doctor as a child, like a
//! sync, so a crash in a driver never takes the agent down.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::config::{self, AgentConfig, AgentStatus, CompanyConfig, Setup};
use super::discovery::{self, FoundCompany};
use super::secrets::SecretStore;
use crate::protocol::{LATEST, Problem, Reason, device_path};
use crate::source::{Secret, SourceConfig};

/// Largest accepted difference between this PC's clock and the server's.
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;
/// Free disk space below which a sync is not started: at least this, and at least twice the
/// company's staging store (a new one is written beside the old).
pub const MIN_FREE_BYTES: u64 = 1 << 30;
/// Overrides [`MIN_FREE_BYTES`] (tests, and PCs with little space to spare).
pub const MIN_FREE_ENV: &str = "CONNECTOR_MIN_FREE_BYTES";

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Fine.
    Ok,
    /// Works now, but may stop (a mapped drive, start at logon off).
    Warning,
    /// Stops syncs: the reason says why.
    Problem,
    /// Not checked, because an earlier check failed or it does not apply.
    Skipped,
}

/// One check's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// The check (`data_folder`).
    pub check: String,
    /// Our company id, for a company's checks.
    pub company: Option<String>,
    /// How it came out.
    pub outcome: Outcome,
    /// Why, for a warning or a problem.
    pub reason: Option<Reason>,
    /// What was found, in words (never a secret).
    pub found: String,
    /// What to do, for a warning or a problem.
    pub advice: Option<String>,
    /// For `data_moved`: where the same company is now, to confirm.
    pub moved_to: Option<Setup>,
}

impl Finding {
    fn new(check: &'static str, company: Option<&str>, outcome: Outcome, found: String) -> Self {
        Finding {
            check: check.to_owned(),
            company: company.map(str::to_owned),
            outcome,
            reason: None,
            found,
            advice: None,
            moved_to: None,
        }
    }

    fn ok(check: &'static str, company: Option<&str>, found: String) -> Self {
        Self::new(check, company, Outcome::Ok, found)
    }

    fn skipped(check: &'static str, company: Option<&str>, found: &str) -> Self {
        Self::new(check, company, Outcome::Skipped, found.to_owned())
    }

    fn failed(
        check: &'static str,
        company: Option<&str>,
        outcome: Outcome,
        reason: Reason,
        found: String,
    ) -> Self {
        Finding {
            reason: Some(reason),
            advice: Some(reason.advice().to_owned()),
            ..Self::new(check, company, outcome, found)
        }
    }
}

/// Everything the doctor found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Every check, in order.
    pub findings: Vec<Finding>,
}

impl Report {
    /// No check found a problem (warnings allowed).
    pub fn passed(&self) -> bool {
        !self.findings.iter().any(|f| f.outcome == Outcome::Problem)
    }

    /// The problems and warnings that concern a company (the PC-wide ones included), as sent
    /// at check-in.
    pub fn problems_for(&self, company: &str) -> Vec<Problem> {
        self.findings
            .iter()
            .filter(|f| f.company.as_deref().is_none_or(|c| c == company))
            .filter_map(|f| {
                f.reason.map(|reason| Problem {
                    check: f.check.clone(),
                    reason,
                    message: f.found.clone(),
                    warning: f.outcome != Outcome::Problem,
                })
            })
            .collect()
    }

    /// The report in words, one line per check and the advice under each failure.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for (i, f) in self.findings.iter().enumerate() {
            let mark = match f.outcome {
                Outcome::Ok => "ok     ",
                Outcome::Warning => "WARNING",
                Outcome::Problem => "PROBLEM",
                Outcome::Skipped => "skipped",
            };
            let company = f
                .company
                .as_deref()
                .map(|c| format!(" [{c}]"))
                .unwrap_or_default();
            let reason = f.reason.map(|r| format!(" ({r})")).unwrap_or_default();
            out.push_str(&format!(
                "{:>2}. {mark} {}{company}{reason}: {}\n",
                i + 1,
                f.check,
                f.found
            ));
            if let Some(advice) = &f.advice {
                out.push_str(&format!("             What to do: {advice}\n"));
            }
        }
        out.push_str(if self.passed() {
            "No problem found.\n"
        } else {
            "The checks marked PROBLEM stop syncs: do what they say, then run the checks again.\n"
        });
        out
    }
}

/// What the doctor looks at.
pub struct DoctorOptions {
    /// The state folder.
    pub state_dir: PathBuf,
    /// The server (default: the one in the agent's status file).
    pub server: Option<String>,
    /// Where Sage's settings folders are (default: the agent's, else the platform's).
    pub sage_root: Option<PathBuf>,
    /// The ODBC template for a found company (default: the agent's, else Sage's).
    pub odbc_template: Option<String>,
    /// Only this company (default: every company).
    pub company: Option<String>,
    /// The `connector` executable (for the start-at-logon entry).
    pub exe: PathBuf,
}

/// Runs every check, in order.
pub fn run(options: &DoctorOptions, secrets: &dyn SecretStore) -> Report {
    let status: Option<AgentStatus> = std::fs::read(AgentStatus::path(&options.state_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let config = AgentConfig::load(&options.state_dir);
    let server = options
        .server
        .clone()
        .or_else(|| status.as_ref().map(|s| s.server.clone()))
        .filter(|s| !s.is_empty());
    let sage_root = options
        .sage_root
        .clone()
        .or_else(|| {
            status
                .as_ref()
                .map(|s| PathBuf::from(&s.sage_root))
                .filter(|p| !p.as_os_str().is_empty())
        })
        .unwrap_or_else(discovery::default_root);
    let template = options
        .odbc_template
        .clone()
        .or_else(|| {
            status
                .as_ref()
                .map(|s| s.odbc_template.clone())
                .filter(|t| !t.is_empty())
        })
        .unwrap_or_else(|| discovery::DEFAULT_TEMPLATE.to_owned());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime can be built");
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(20))
        .build()
        .expect("an HTTP client can be built");

    let mut findings = vec![agent_running(&options.state_dir)];
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            findings.push(Finding::failed(
                "settings",
                None,
                Outcome::Problem,
                Reason::LocalStorage,
                e.to_string(),
            ));
            return Report { findings };
        }
    };
    findings.push(start_at_logon(options, &config));
    let server_ok = match &server {
        Some(server) => {
            let f = rt.block_on(server_answers(&http, server));
            let ok = f.outcome == Outcome::Ok;
            findings.push(f);
            ok
        }
        None => {
            findings.push(Finding::failed(
                "server",
                None,
                Outcome::Problem,
                Reason::NotRunning,
                "the connector has never run on this PC (no server known)".into(),
            ));
            false
        }
    };
    for company in config
        .companies
        .iter()
        .filter(|c| options.company.as_deref().is_none_or(|id| id == c.id))
    {
        let id = Some(company.id.as_str());
        findings.push(match (&server, server_ok) {
            (Some(server), true) => rt.block_on(credential(&http, server, company, secrets)),
            _ => Finding::skipped("credential", id, "the server could not be reached"),
        });
        let Some(setup) = &company.setup else {
            findings.push(Finding::failed(
                "data_folder",
                id,
                Outcome::Problem,
                Reason::DataFolderNotFound,
                "no Sage company has been chosen yet".into(),
            ));
            continue;
        };
        let password = secrets
            .get(&config::sage_secret(&company.id))
            .ok()
            .flatten();
        let login = |odbc: &str| {
            SourceConfig::new(odbc, setup.user.clone(), password.clone().map(Secret::new))
        };
        let folder = data_folder(company, setup, &sage_root, &template, &login);
        let folder_ok = folder.outcome != Outcome::Problem;
        findings.push(folder);
        findings.push(odbc_driver(company, &login(&setup.odbc)));
        findings.push(if folder_ok {
            sage_login(company, setup, &login(&setup.odbc))
        } else {
            Finding::skipped("sage_login", id, "the data folder is not there")
        });
        findings.push(disk_space(&options.state_dir, company));
        findings.push(last_sync(company));
    }
    Report { findings }
}

fn agent_running(state_dir: &Path) -> Finding {
    let Some(control) = super::control::Control::find(state_dir) else {
        return Finding::failed(
            "agent",
            None,
            Outcome::Problem,
            Reason::NotRunning,
            "the connector has not run on this PC for this user".into(),
        );
    };
    if control.alive() {
        Finding::ok(
            "agent",
            None,
            format!("the connector is running (port {})", control.port()),
        )
    } else {
        Finding::failed(
            "agent",
            None,
            Outcome::Problem,
            Reason::NotRunning,
            format!(
                "the connector is not running (nothing answers on port {})",
                control.port()
            ),
        )
    }
}

fn start_at_logon(options: &DoctorOptions, config: &AgentConfig) -> Finding {
    match super::autostart::is_enabled(&options.exe) {
        Ok(true) => Finding::ok(
            "start_at_logon",
            None,
            "the connector starts at logon".into(),
        ),
        Ok(false) => Finding::failed(
            "start_at_logon",
            None,
            Outcome::Warning,
            Reason::StartAtLogonOff,
            match config.start_at_logon {
                Some(false) => "the connector does not start at logon (you chose so)".into(),
                _ => "the connector does not start at logon".into(),
            },
        ),
        Err(e) => Finding::failed(
            "start_at_logon",
            None,
            Outcome::Warning,
            Reason::StartAtLogonOff,
            e.to_string(),
        ),
    }
}

/// The full chain of an error's causes, for telling TLS failures from the rest.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn server_answers(http: &reqwest::Client, server: &str) -> Finding {
    let url = format!("{}/healthz", server.trim_end_matches('/'));
    let proxy = ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .map(|p| format!(" through the proxy {}", without_userinfo(&p)))
        .unwrap_or_default();
    let response = match http.get(&url).send().await {
        Ok(r) => r,
        Err(e) => {
            let chain = causes(&e).to_lowercase();
            let tls = ["certificate", "tls", "ssl", "handshake"]
                .iter()
                .any(|w| chain.contains(w));
            return Finding::failed(
                "server",
                None,
                Outcome::Problem,
                if tls {
                    Reason::TlsFailed
                } else {
                    Reason::Offline
                },
                format!("the server {server} could not be reached{proxy}: {chain}"),
            );
        }
    };
    if !response.status().is_success() {
        return Finding::failed(
            "server",
            None,
            Outcome::Problem,
            Reason::Offline,
            format!(
                "the server {server} answered HTTP {}{proxy}",
                response.status().as_u16()
            ),
        );
    }
    let server_time = response
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|d| d.to_str().ok())
        .and_then(|d| chrono::DateTime::parse_from_rfc2822(d).ok());
    if let Some(t) = server_time {
        let skew = (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds();
        if skew.abs() > MAX_CLOCK_SKEW_SECS {
            return Finding::failed(
                "server",
                None,
                Outcome::Problem,
                Reason::ClockSkew,
                format!(
                    "this PC's clock is {} minutes {} the server's",
                    skew.abs() / 60,
                    if skew > 0 { "ahead of" } else { "behind" }
                ),
            );
        }
    }
    Finding::ok(
        "server",
        None,
        format!("the server {server} answers and the clocks agree"),
    )
}

/// A proxy URL without its user and password.
fn without_userinfo(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_owned(),
        },
        None => url.rsplit('@').next().unwrap_or(url).to_owned(),
    }
}

#[cfg(test)]
#[test]
fn a_proxy_password_never_shows() {
    assert_eq!(
        without_userinfo("http://u:p@ss@proxy:3128"),
        "http://***@proxy:3128"
    );
    assert_eq!(without_userinfo("http://proxy:3128"), "http://proxy:3128");
}

async fn credential(
    http: &reqwest::Client,
    server: &str,
    company: &CompanyConfig,
    secrets: &dyn SecretStore,
) -> Finding {
    let id = Some(company.id.as_str());
    let revoked = |found: String| {
        Finding::failed(
            "credential",
            id,
            Outcome::Problem,
            Reason::DeviceRevoked,
            found,
        )
    };
    if company.revoked {
        return revoked("the server disconnected this connector from the company".into());
    }
    let credential = match secrets.get(&config::device_secret(&company.id)) {
        Ok(Some(c)) => c,
        Ok(None) => return revoked("this PC holds no credential for the company".into()),
        Err(e) => {
            return Finding::failed(
                "credential",
                id,
                Outcome::Problem,
                Reason::LocalStorage,
                e.to_string(),
            );
        }
    };
    let url = format!(
        "{}{}",
        server.trim_end_matches('/'),
        device_path(&company.id, LATEST)
    );
    match http.get(&url).bearer_auth(credential).send().await {
        Ok(r) if r.status().is_success() => Finding::ok(
            "credential",
            id,
            "the server accepts this connector's credential".into(),
        ),
        Ok(r) if r.status().as_u16() == 401 || r.status().as_u16() == 404 => revoked(format!(
            "the server refused this connector's credential (HTTP {})",
            r.status().as_u16()
        )),
        Ok(r) => Finding::failed(
            "credential",
            id,
            Outcome::Problem,
            Reason::Offline,
            format!("the server answered HTTP {}", r.status().as_u16()),
        ),
        Err(e) => Finding::failed(
            "credential",
            id,
            Outcome::Problem,
            Reason::Offline,
            format!("the server could not be reached: {e}"),
        ),
    }
}

fn data_folder(
    company: &CompanyConfig,
    setup: &Setup,
    sage_root: &Path,
    template: &str,
    login: &dyn Fn(&str) -> SourceConfig,
) -> Finding {
    let id = Some(company.id.as_str());
    let accdata = Path::new(&setup.accdata);
    match std::fs::read_dir(accdata) {
        Ok(_) if is_drive_letter(&setup.accdata) => Finding::failed(
            "data_folder",
            id,
            Outcome::Warning,
            Reason::MappedDrive,
            format!(
                "the Sage data folder {} is on a drive letter other than C:",
                setup.accdata
            ),
        ),
        Ok(_) => Finding::ok(
            "data_folder",
            id,
            format!("the Sage data folder {} is there", setup.accdata),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Finding::failed(
            "data_folder",
            id,
            Outcome::Problem,
            Reason::DataFolderNotFound,
            format!(
                "the Sage data folder {} cannot be read by this user",
                setup.accdata
            ),
        ),
        Err(_) => {
            let found = discovery::find_companies(sage_root);
            match find_moved(setup, &company.declined_moves, &found, template, login) {
                Some(to) => Finding {
                    moved_to: Some(to.clone()),
                    ..Finding::failed(
                        "data_folder",
                        id,
                        Outcome::Problem,
                        Reason::DataMoved,
                        format!(
                            "the Sage data folder {} is gone; the same company ({}) is now in {}",
                            setup.accdata, setup.sage_company_name, to.accdata
                        ),
                    )
                },
                None => Finding::failed(
                    "data_folder",
                    id,
                    Outcome::Problem,
                    Reason::DataFolderNotFound,
                    format!(
                        "the Sage data folder {} is gone, and no Sage installation on this PC lists the company {} elsewhere ({} companies looked at)",
                        setup.accdata,
                        setup.sage_company_name,
                        found.len()
                    ),
                ),
            }
        }
    }
}

/// A Windows drive letter other than C: (maybe a mapped network drive).
fn is_drive_letter(path: &str) -> bool {
    let b = path.as_bytes();
    b.len() >= 2 && b[1] == b':' && b[0].is_ascii_alphabetic() && !b[0].eq_ignore_ascii_case(&b'C')
}

/// The same Sage company in another folder: every company listed by every Sage version
/// (newest first) that this process can see is asked for its `COMPANYID` with the company's
/// own login; the first whose id is the one set up is taken. A company with the same name
/// but another id is a different company and is never taken, nor is a folder the user
/// declined; without a company id nothing is taken.
pub fn find_moved(
    setup: &Setup,
    declined: &[String],
    found: &[FoundCompany],
    template: &str,
    login: &dyn Fn(&str) -> SourceConfig,
) -> Option<Setup> {
    if setup.sage_company_id.trim().is_empty() {
        // without Sage's company id a move cannot be told from another company
        return None;
    }
    for candidate in found {
        if !candidate.exists
            || candidate.accdata == Path::new(&setup.accdata)
            || declined
                .iter()
                .any(|d| Path::new(d) == candidate.accdata.as_path())
        {
            continue;
        }
        let odbc = discovery::connection_string(template, candidate);
        match crate::extract::probe(&login(&odbc)) {
            Ok(p) if p.company_id == setup.sage_company_id => {
                tracing::info!(from = %setup.accdata, to = %candidate.accdata.display(), company = %p.company_name, "Found the moved Sage company by its company id.");
                return Some(Setup {
                    accdata: candidate.accdata.display().to_string(),
                    version: Some(candidate.version),
                    odbc,
                    user: setup.user.clone(),
                    sage_company_id: p.company_id,
                    sage_company_name: p.company_name,
                });
            }
            Ok(p) => {
                tracing::info!(folder = %candidate.accdata.display(), company = %p.company_name, "A Sage company with another company id: not the one that moved.");
            }
            Err(e) => {
                tracing::info!(folder = %candidate.accdata.display(), error = %e, "Could not read a listed Sage company.");
            }
        }
    }
    None
}

fn odbc_driver(company: &CompanyConfig, source: &SourceConfig) -> Finding {
    let id = Some(company.id.as_str());
    let Some(driver) = source.driver() else {
        return Finding::skipped("odbc_driver", id, "the connection names no driver (a DSN)");
    };
    let installed = match crate::extract::installed_drivers() {
        Ok(d) => d,
        Err(e) => {
            return Finding::failed(
                "odbc_driver",
                id,
                Outcome::Problem,
                Reason::DriverMissing,
                format!("the ODBC driver manager did not answer: {e}"),
            );
        }
    };
    let bits = usize::BITS;
    let Some((_, library)) = installed
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(&driver))
    else {
        return Finding::failed(
            "odbc_driver",
            id,
            Outcome::Problem,
            Reason::DriverMissing,
            format!(
                "the ODBC driver \"{driver}\" is not installed for {bits}-bit programs (installed: {})",
                if installed.is_empty() {
                    "none".to_owned()
                } else {
                    installed
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
        );
    };
    match library.as_deref().and_then(library_bits) {
        Some(b) if b != bits => Finding::failed(
            "odbc_driver",
            id,
            Outcome::Problem,
            Reason::DriverMissing,
            format!("the ODBC driver \"{driver}\" is {b}-bit; this connector is {bits}-bit"),
        ),
        _ => Finding::ok(
            "odbc_driver",
            id,
            format!("the ODBC driver \"{driver}\" is installed ({bits}-bit)"),
        ),
    }
}

/// Whether a driver library is 32- or 64-bit, from its ELF or PE header.
fn library_bits(path: &Path) -> Option<u32> {
    use std::io::Read;
    let mut head = vec![0u8; 4096];
    let mut file = std::fs::File::open(path).ok()?;
    let n = file.read(&mut head).ok()?;
    head.truncate(n);
    if head.starts_with(b"\x7fELF") && head.len() > 4 {
        return match head[4] {
            1 => Some(32),
            2 => Some(64),
            _ => None,
        };
    }
    if head.starts_with(b"MZ") && head.len() >= 0x40 {
        let pe = u32::from_le_bytes(head[0x3c..0x40].try_into().ok()?) as usize;
        let machine = head.get(pe + 4..pe + 6)?;
        return match u16::from_le_bytes([machine[0], machine[1]]) {
            0x014c => Some(32),
            0x8664 | 0xaa64 => Some(64),
            _ => None,
        };
    }
    None
}

fn sage_login(company: &CompanyConfig, setup: &Setup, source: &SourceConfig) -> Finding {
    let id = Some(company.id.as_str());
    match crate::extract::probe(source) {
        Ok(p) if !setup.sage_company_id.is_empty() && p.company_id != setup.sage_company_id => {
            Finding::failed(
                "sage_login",
                id,
                Outcome::Problem,
                Reason::OtherCompany,
                format!(
                    "the folder {} now holds another Sage company ({}), not {}",
                    setup.accdata, p.company_name, setup.sage_company_name
                ),
            )
        }
        Ok(p) => Finding::ok(
            "sage_login",
            id,
            format!("Sage accepts the login for {}", p.company_name),
        ),
        Err(e) => Finding::failed(
            "sage_login",
            id,
            Outcome::Problem,
            e.reason(),
            e.to_string(),
        ),
    }
}

fn disk_space(state_dir: &Path, company: &CompanyConfig) -> Finding {
    let id = Some(company.id.as_str());
    let staging = crate::state::company_dir(state_dir, &company.id).join("staging.duckdb");
    let staging_bytes = std::fs::metadata(&staging).map(|m| m.len()).unwrap_or(0);
    let floor = std::env::var(MIN_FREE_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MIN_FREE_BYTES);
    let needed = floor.max(staging_bytes.saturating_mul(2));
    let mut dir = state_dir.to_owned();
    while !dir.exists() && dir.pop() {}
    match fs4::available_space(&dir) {
        Ok(free) if free >= needed => Finding::ok(
            "disk_space",
            id,
            format!("{} MB free on the connector's drive", free >> 20),
        ),
        Ok(free) => Finding::failed(
            "disk_space",
            id,
            Outcome::Problem,
            Reason::DiskFull,
            format!(
                "{} MB free on the drive of {}; a sync needs {} MB",
                free >> 20,
                dir.display(),
                needed.div_ceil(1 << 20)
            ),
        ),
        Err(e) => Finding::failed(
            "disk_space",
            id,
            Outcome::Warning,
            Reason::LocalStorage,
            format!("could not read the free space of {}: {e}", dir.display()),
        ),
    }
}

fn last_sync(company: &CompanyConfig) -> Finding {
    let id = Some(company.id.as_str());
    match (company.last_error, &company.last_success) {
        (Some(reason), _) => Finding::failed(
            "last_sync",
            id,
            Outcome::Problem,
            reason,
            format!(
                "the last sync failed: {}",
                company.last_message.as_deref().unwrap_or(reason.code())
            ),
        ),
        (None, Some(at)) => {
            Finding::ok("last_sync", id, format!("the last sync published at {at}"))
        }
        (None, None) => Finding::skipped("last_sync", id, "no sync has finished yet"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_library_says_its_bitness() {
        let dir = tempfile::tempdir().unwrap();
        let elf32 = dir.path().join("a.so");
        std::fs::write(&elf32, b"\x7fELF\x01\x01\x01\0\0\0\0\0").unwrap();
        assert_eq!(library_bits(&elf32), Some(32));
        let mut pe = vec![0u8; 0x100];
        pe[0..2].copy_from_slice(b"MZ");
        pe[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        pe[0x80..0x84].copy_from_slice(b"PE\0\0");
        pe[0x84..0x86].copy_from_slice(&0x014cu16.to_le_bytes());
        let dll = dir.path().join("a.dll");
        std::fs::write(&dll, &pe).unwrap();
        assert_eq!(library_bits(&dll), Some(32));
        pe[0x84..0x86].copy_from_slice(&0x8664u16.to_le_bytes());
        std::fs::write(&dll, &pe).unwrap();
        assert_eq!(library_bits(&dll), Some(64));
        // this very test binary is of this process's bitness
        let me = std::env::current_exe().unwrap();
        assert_eq!(library_bits(&me), Some(usize::BITS));
    }

    #[test]
    fn only_drive_letters_other_than_c_are_mapped_drive_suspects() {
        assert!(is_drive_letter("F:\\Accounts\\Company.000\\ACCDATA"));
        assert!(!is_drive_letter(
            "C:\\ProgramData\\Sage\\Accounts\\2026\\Company.000"
        ));
        assert!(!is_drive_letter("\\\\server\\share\\ACCDATA"));
        assert!(!is_drive_letter("/srv/sage/ACCDATA"));
    }
}
