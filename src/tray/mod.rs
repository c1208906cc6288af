//! The tray app (`connector-tray`): what the Sage user sees of the connector. A thin parent
//! that runs the agent (`connector run …`) as its child process and shows the agent's
//! `status.json`: an icon whose colour is the state at a glance, a menu with a status line per
//! company and its actions, and a desktop notification for what needs the user.
//!
//! Takes the arguments of `connector run`; produces the icon, menu and notifications. What it
//! guarantees: a crash of the agent (or of a sync inside it: ODBC and DuckDB run in the
//! agent's own children) never takes the tray down; the tray says so and restarts the agent
//! with backoff ([`Supervisor`]). The menu's actions go to the agent's loopback listener with
//! the agent's ticket ([`Control`]). Closing the settings page leaves everything running.
//!
//! Everything here but [`gui`] is plain Rust, unit-tested; [`gui`] (cargo feature `tray`) is
//! the event loop, icon and menu glue, one code path for every platform, tested on Linux over
//! D-Bus in `tests/it/tray.rs`.

#[cfg(feature = "tray")]
pub mod gui;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::agent::config::{AgentStatus, CompanyStatus};
pub use crate::agent::control::Control;
use crate::protocol::{CompanyState, Reason};

/// The icon's state at a glance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IconState {
    /// Every company up to date (or waiting for its next sync).
    Ok,
    /// A sync runs.
    Syncing,
    /// Something needs the user: a failure, a move to confirm, a company to set up, the agent
    /// down.
    Attention,
}

impl IconState {
    /// The icon's colour (RGB).
    pub fn rgb(self) -> [u8; 3] {
        match self {
            IconState::Ok => [0x1e, 0x8e, 0x3e],
            IconState::Syncing => [0x1a, 0x5f, 0xd6],
            IconState::Attention => [0xe0, 0x6c, 0x00],
        }
    }

    /// A round icon of `size` pixels in the state's colour, with a white tick, dots or bang:
    /// RGBA rows.
    pub fn rgba(self, size: u32) -> Vec<u8> {
        let [r, g, b] = self.rgb();
        let c = (size as f32 - 1.0) / 2.0;
        let radius = size as f32 / 2.0 - 0.5;
        let mut out = Vec::with_capacity((size * size * 4) as usize);
        for y in 0..size {
            for x in 0..size {
                let (dx, dy) = (x as f32 - c, y as f32 - c);
                let inside = (dx * dx + dy * dy).sqrt() <= radius;
                let mark = inside && self.mark(dx / radius, dy / radius);
                let px = match (inside, mark) {
                    (false, _) => [0, 0, 0, 0],
                    (true, true) => [255, 255, 255, 255],
                    (true, false) => [r, g, b, 255],
                };
                out.extend_from_slice(&px);
            }
        }
        out
    }

    /// Whether a point (in units of the radius) is on the white mark.
    fn mark(self, x: f32, y: f32) -> bool {
        match self {
            // a tick: two strokes
            IconState::Ok => {
                let near = |ax: f32, ay: f32, bx: f32, by: f32| {
                    let (vx, vy) = (bx - ax, by - ay);
                    let t = (((x - ax) * vx + (y - ay) * vy) / (vx * vx + vy * vy)).clamp(0.0, 1.0);
                    let (px, py) = (ax + t * vx - x, ay + t * vy - y);
                    (px * px + py * py).sqrt() < 0.11
                };
                near(-0.45, 0.0, -0.12, 0.35) || near(-0.12, 0.35, 0.5, -0.35)
            }
            // three dots
            IconState::Syncing => [-0.45f32, 0.0, 0.45]
                .iter()
                .any(|cx| ((x - cx).powi(2) + y * y).sqrt() < 0.15),
            // an exclamation mark
            IconState::Attention => {
                (x.abs() < 0.11 && (-0.6..0.2).contains(&y))
                    || (x * x + (y - 0.45).powi(2)).sqrt() < 0.13
            }
        }
    }
}

/// One line of the menu.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// What it says.
    pub label: String,
    /// What it does (None: a status line).
    pub action: Option<Action>,
}

/// What a menu item does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Sync one company now (None: every company).
    SyncNow(Option<String>),
    /// Pause every company for 24 hours.
    Pause,
    /// Resume every company.
    Resume,
    /// Open the settings page in the default browser.
    OpenSettings,
    /// Open the folder of the logs.
    OpenLogs,
    /// Stop the agent and quit.
    Quit,
}

/// What the tray shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// The icon's state.
    pub icon: IconState,
    /// The tooltip (where the platform has one) and title: the last sync, in a line.
    pub tooltip: String,
    /// The menu, top to bottom.
    pub items: Vec<Item>,
}

/// A company's state in words.
fn state_words(c: &CompanyStatus) -> String {
    match c.state {
        CompanyState::NeedsSetup => "needs its Sage company".into(),
        CompanyState::Ready => "ready, first sync to come".into(),
        CompanyState::Syncing => "syncing…".into(),
        CompanyState::UpToDate => "up to date".into(),
        CompanyState::Failing => format!(
            "needs attention: {}",
            c.advice.as_deref().unwrap_or("the last sync failed")
        ),
        CompanyState::Paused => "paused".into(),
        CompanyState::Revoked => "disconnected: link it again from your app".into(),
        CompanyState::Moved => "your Sage data moved: confirm the new folder in settings".into(),
    }
}

/// A time of `status.json` as the user reads it (local time, minutes).
fn when(t: &Option<String>) -> String {
    t.as_deref()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|d| {
            d.with_timezone(&chrono::Local)
                .format("%a %d %b %H:%M")
                .to_string()
        })
        .unwrap_or_else(|| "never".into())
}

/// The tray's view of the agent's status (None: the agent is not running; `down` says why).
pub fn view(status: Option<&AgentStatus>, down: Option<&str>) -> View {
    let mut items = Vec::new();
    let companies = status.map(|s| s.companies.as_slice()).unwrap_or_default();
    if let Some(why) = down {
        items.push(Item {
            label: why.to_owned(),
            action: None,
        });
    }
    for c in companies {
        items.push(Item {
            label: format!(
                "{}: {} · last sync {} · next {}",
                c.name,
                state_words(c),
                when(&c.last_success),
                if c.next_sync_at.is_some() {
                    when(&c.next_sync_at)
                } else {
                    "—".into()
                }
            ),
            action: None,
        });
    }
    if companies.is_empty() && down.is_none() {
        items.push(Item {
            label: "No company linked yet: start from your app's link page".into(),
            action: None,
        });
    }
    let active: Vec<&CompanyStatus> = companies
        .iter()
        .filter(|c| !matches!(c.state, CompanyState::Revoked | CompanyState::NeedsSetup))
        .collect();
    if !active.is_empty() {
        items.push(Item {
            label: "Sync now".into(),
            action: Some(Action::SyncNow(None)),
        });
        if active.len() > 1 {
            for c in &active {
                items.push(Item {
                    label: format!("Sync now: {}", c.name),
                    action: Some(Action::SyncNow(Some(c.id.clone()))),
                });
            }
        }
        let all_paused = active.iter().all(|c| c.state == CompanyState::Paused);
        items.push(if all_paused {
            Item {
                label: "Resume syncing".into(),
                action: Some(Action::Resume),
            }
        } else {
            Item {
                label: "Pause syncing for 24 hours".into(),
                action: Some(Action::Pause),
            }
        });
    }
    for (label, action) in [
        ("Open settings", Action::OpenSettings),
        ("Open logs", Action::OpenLogs),
        ("Quit", Action::Quit),
    ] {
        items.push(Item {
            label: label.into(),
            action: Some(action),
        });
    }
    let attention = down.is_some()
        || companies.iter().any(|c| {
            matches!(
                c.state,
                CompanyState::Failing
                    | CompanyState::Moved
                    | CompanyState::NeedsSetup
                    | CompanyState::Revoked
            )
        });
    let icon = if attention {
        IconState::Attention
    } else if companies.iter().any(|c| c.state == CompanyState::Syncing) {
        IconState::Syncing
    } else {
        IconState::Ok
    };
    let last = companies
        .iter()
        .filter_map(|c| c.last_success.clone())
        .max();
    let tooltip = match (down, icon) {
        (Some(why), _) => format!("Sage Connector: {why}"),
        (None, IconState::Attention) => "Sage Connector: needs attention".into(),
        (None, IconState::Syncing) => "Sage Connector: syncing…".into(),
        (None, IconState::Ok) => format!("Sage Connector: last sync {}", when(&last)),
    };
    View {
        icon,
        tooltip,
        items,
    }
}

/// A desktop notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The title.
    pub summary: String,
    /// The text.
    pub body: String,
}

/// What needs the user and was not notified yet: Sage credentials rejected, data moved, disk
/// full, the connector revoked. Each (company, reason) once, until it clears; `sent` keeps
/// what was notified.
pub fn notices(status: &AgentStatus, sent: &mut HashSet<(String, Reason)>) -> Vec<Notice> {
    let mut now = HashSet::new();
    for c in &status.companies {
        let mut reasons: Vec<Reason> = Vec::new();
        match c.state {
            CompanyState::Moved => reasons.push(Reason::DataMoved),
            CompanyState::Revoked => reasons.push(Reason::DeviceRevoked),
            _ => {}
        }
        if let Some(r) = c.last_error {
            reasons.push(r);
        }
        reasons.extend(c.problems.iter().filter(|p| !p.warning).map(|p| p.reason));
        for r in reasons {
            if matches!(
                r,
                Reason::CredentialsRejected
                    | Reason::DataMoved
                    | Reason::DiskFull
                    | Reason::DeviceRevoked
            ) {
                now.insert((c.id.clone(), r));
            }
        }
    }
    let mut out = Vec::new();
    let mut fresh: Vec<&(String, Reason)> = now.difference(sent).collect();
    fresh.sort_by_key(|(c, r)| (c.clone(), r.code()));
    for (company, reason) in fresh {
        let name = status
            .companies
            .iter()
            .find(|c| &c.id == company)
            .map(|c| c.name.as_str())
            .unwrap_or(company);
        let summary = match reason {
            Reason::CredentialsRejected => format!("{name}: Sage refused the login"),
            Reason::DataMoved => format!("{name}: your Sage data moved"),
            Reason::DiskFull => format!("{name}: this PC is out of disk space"),
            Reason::DeviceRevoked => format!("{name}: the connector was disconnected"),
            _ => format!("{name}: needs attention"),
        };
        out.push(Notice {
            summary,
            body: reason.advice().to_owned(),
        });
    }
    *sent = now;
    out
}

/// The agent's status file, if it is there and whole.
pub fn read_status(state_dir: &Path) -> Option<AgentStatus> {
    std::fs::read(AgentStatus::path(state_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// The state folder `connector run` is given (`--state-dir`), else the platform's.
pub fn state_dir_of(args: &[String]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--state-dir" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = a.strip_prefix("--state-dir=") {
            return Some(PathBuf::from(v));
        }
    }
    crate::state::state_dir_from_env()
}

/// Longest wait before restarting a crashed agent.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The agent as the tray's child: started, watched, restarted with backoff after a crash.
pub struct Supervisor {
    exe: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    crashes_in_a_row: u32,
    restart_at: Option<Instant>,
    started_at: Option<Instant>,
    /// Why the agent is not running now, in words (None while it runs).
    pub down: Option<String>,
    /// How many times it was started.
    pub starts: u32,
    /// The agent's state folder (to find an agent already running there).
    state_dir: Option<PathBuf>,
    /// An agent this tray did not start answers there: watched, not started again.
    pub attached: bool,
}

impl Supervisor {
    /// A supervisor of `exe run ARGS`, the agent's log appended to `log`.
    pub fn new(exe: PathBuf, args: Vec<String>, log: PathBuf) -> Self {
        Supervisor {
            exe,
            state_dir: state_dir_of(&args),
            args,
            log,
            child: None,
            crashes_in_a_row: 0,
            restart_at: Some(Instant::now()),
            started_at: None,
            down: Some("Starting the connector…".into()),
            starts: 0,
            attached: false,
        }
    }

    /// Looks at the child: notices a crash, restarts when its backoff is over. Call often.
    pub fn tick(&mut self) {
        if let Some(child) = &mut self.child
            && let Ok(Some(status)) = child.try_wait()
        {
            self.child = None;
            // a run that lasted a while resets the backoff
            if self
                .started_at
                .is_some_and(|t| t.elapsed() > Duration::from_secs(300))
            {
                self.crashes_in_a_row = 0;
            }
            self.crashes_in_a_row += 1;
            let wait = Duration::from_secs(1 << self.crashes_in_a_row.min(6)).min(MAX_BACKOFF);
            self.restart_at = Some(Instant::now() + wait);
            let why = format!(
                "The connector stopped unexpectedly ({status}); restarting in {} s",
                wait.as_secs()
            );
            tracing::error!(status = %status, restart_in_secs = wait.as_secs(), "The connector agent stopped unexpectedly; restarting it.");
            self.down = Some(why);
        }
        if self.child.is_none()
            && let Some(at) = self.restart_at
            && Instant::now() >= at
        {
            self.start();
        }
    }

    fn start(&mut self) {
        self.restart_at = None;
        // One agent per state folder: one started before this tray (at logon, by hand) is
        // watched, not fought over its port; looked at again every few seconds.
        if let Some(control) = self.state_dir.as_deref().and_then(Control::find)
            && control.alive()
        {
            if self.attached {
                tracing::debug!("The connector agent this tray shows still answers.");
            } else {
                tracing::info!(
                    "A connector agent is already running for this state folder; the tray shows it."
                );
            }
            self.attached = true;
            self.down = None;
            self.restart_at = Some(Instant::now() + Duration::from_secs(5));
            return;
        }
        self.attached = false;
        if let Some(dir) = self.log.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log);
        let stderr = match log {
            Ok(f) => Stdio::from(f),
            Err(_) => Stdio::null(),
        };
        let mut command = Command::new(&self.exe);
        #[cfg(windows)]
        {
            use std::os::windows::process::CommandExt;
            command.creation_flags(crate::agent::CREATE_NO_WINDOW);
        }
        match command
            .arg("run")
            .args(&self.args)
            .stdin(Stdio::null())
            .stderr(stderr)
            .spawn()
        {
            Ok(child) => {
                tracing::info!(pid = child.id(), "Started the connector agent.");
                self.child = Some(child);
                self.started_at = Some(Instant::now());
                self.starts += 1;
                self.down = None;
            }
            Err(e) => {
                self.crashes_in_a_row += 1;
                self.restart_at = Some(Instant::now() + MAX_BACKOFF);
                self.down = Some(format!(
                    "The connector could not start ({}: {e}); trying again in a minute",
                    self.exe.display()
                ));
            }
        }
    }

    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the agent (SIGTERM, then kill after 10 s) and does not restart it.
    pub fn stop(&mut self) {
        self.restart_at = None;
        let Some(mut child) = self.child.take() else {
            return;
        };
        #[cfg(unix)]
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        #[cfg(not(unix))]
        let _ = child.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Carries out a menu action that goes to the agent; returns the HTTP status.
pub fn act(control: &Control, action: &Action) -> std::io::Result<u16> {
    match action {
        Action::SyncNow(company) => control.post(
            "/control/sync-now",
            &serde_json::json!({ "company": company }),
        ),
        Action::Pause => control.post("/control/pause", &serde_json::json!({ "hours": 24 })),
        Action::Resume => control.post("/control/pause", &serde_json::json!({ "hours": 0 })),
        _ => Ok(204),
    }
}

/// Opens a URL or a folder with the desktop's default program.
pub fn open(target: &str) {
    let (program, args): (&str, Vec<&str>) = if cfg!(windows) {
        ("cmd", vec!["/C", "start", "", target])
    } else if cfg!(target_os = "macos") {
        ("open", vec![target])
    } else {
        ("xdg-open", vec![target])
    };
    if let Err(e) = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        tracing::warn!(program, error = %e, "Could not open with the default program.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::config::CompanyStatus;

    fn company(id: &str, state: CompanyState, error: Option<Reason>) -> CompanyStatus {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": format!("Co {id}"), "state": state, "sageCompany": null,
            "lastSuccess": "2026-12-04T08:00:00Z", "lastError": error, "advice": error.map(|r| r.advice()),
            "lastMessage": null, "nextSyncAt": null, "waitingBecause": null, "syncsStarted": 0,
            "syncStartedAt": null, "syncStartedBecause": null, "returnUrl": null,
        }))
        .unwrap()
    }

    fn status(companies: Vec<CompanyStatus>) -> AgentStatus {
        AgentStatus {
            companies,
            ..Default::default()
        }
    }

    #[test]
    fn the_icon_says_ok_syncing_or_attention_and_the_menu_has_a_line_per_company() {
        let ok = status(vec![company("a", CompanyState::UpToDate, None)]);
        let v = view(Some(&ok), None);
        assert_eq!(v.icon, IconState::Ok);
        assert!(v.items[0].label.starts_with("Co a: up to date"), "{v:?}");
        let labels: Vec<&str> = v.items.iter().map(|i| i.label.as_str()).collect();
        assert_eq!(
            labels[1..],
            [
                "Sync now",
                "Pause syncing for 24 hours",
                "Open settings",
                "Open logs",
                "Quit"
            ]
        );
        let two = status(vec![
            company("a", CompanyState::Syncing, None),
            company("b", CompanyState::Paused, None),
        ]);
        let v = view(Some(&two), None);
        assert_eq!(v.icon, IconState::Syncing);
        assert!(
            v.items
                .iter()
                .any(|i| i.action == Some(Action::SyncNow(Some("b".into()))))
        );
        let failing = status(vec![company(
            "a",
            CompanyState::Failing,
            Some(Reason::CompanyLocked),
        )]);
        let v = view(Some(&failing), None);
        assert_eq!(v.icon, IconState::Attention);
        assert!(
            v.items[0].label.contains(Reason::CompanyLocked.advice()),
            "{v:?}"
        );
        let paused = status(vec![company("a", CompanyState::Paused, None)]);
        assert!(
            view(Some(&paused), None)
                .items
                .iter()
                .any(|i| i.action == Some(Action::Resume))
        );
        let down = view(None, Some("The connector stopped unexpectedly"));
        assert_eq!(down.icon, IconState::Attention);
        assert_eq!(down.items[0].label, "The connector stopped unexpectedly");
    }

    #[test]
    fn each_thing_that_needs_the_user_is_notified_once_until_it_clears() {
        let mut sent = HashSet::new();
        let s = status(vec![
            company(
                "a",
                CompanyState::Failing,
                Some(Reason::CredentialsRejected),
            ),
            company("b", CompanyState::Failing, Some(Reason::Offline)),
        ]);
        let n = notices(&s, &mut sent);
        assert_eq!(n.len(), 1, "{n:?}");
        assert_eq!(n[0].summary, "Co a: Sage refused the login");
        assert_eq!(n[0].body, Reason::CredentialsRejected.advice());
        assert!(notices(&s, &mut sent).is_empty());
        let fixed = status(vec![company("a", CompanyState::UpToDate, None)]);
        assert!(notices(&fixed, &mut sent).is_empty());
        assert_eq!(
            notices(&s, &mut sent).len(),
            1,
            "notified again after it cleared"
        );
        let moved = status(vec![company("a", CompanyState::Moved, None)]);
        assert_eq!(
            notices(&moved, &mut sent)[0].summary,
            "Co a: your Sage data moved"
        );
    }

    #[test]
    fn the_icons_differ_by_colour_and_are_round() {
        for state in [IconState::Ok, IconState::Syncing, IconState::Attention] {
            let px = state.rgba(32);
            assert_eq!(px.len(), 32 * 32 * 4);
            assert_eq!(&px[0..4], &[0, 0, 0, 0], "a corner is transparent");
            let [r, g, b] = state.rgb();
            assert!(px.chunks(4).any(|p| p == [r, g, b, 255]));
            assert!(
                px.chunks(4).any(|p| p == [255, 255, 255, 255]),
                "a white mark"
            );
        }
    }

    #[test]
    fn a_crashed_agent_is_restarted_with_backoff() {
        let dir = tempfile::tempdir().unwrap();
        // `sh run -c …` is not the agent, but a child that dies at once like a crashing one
        let script = dir.path().join("agent.sh");
        std::fs::write(&script, "#!/bin/sh\nexit 3\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
            let mut s = Supervisor::new(script, vec![], dir.path().join("logs/agent.log"));
            s.tick();
            assert_eq!(s.starts, 1);
            std::thread::sleep(Duration::from_millis(300));
            s.tick();
            let down = s.down.clone().expect("the crash is reported");
            assert!(
                down.contains("stopped unexpectedly") && down.contains("restarting in 2 s"),
                "{down}"
            );
            s.tick();
            assert_eq!(s.starts, 1, "not before the backoff");
            std::thread::sleep(Duration::from_millis(2100));
            s.tick();
            assert_eq!(s.starts, 2);
            std::thread::sleep(Duration::from_millis(300));
            s.tick();
            assert!(s.down.as_deref().unwrap().contains("restarting in 4 s"));
        }
    }
}
