//! The tray's GUI glue (cargo feature `tray`): `tray-icon` (on Linux an app indicator: a
//! StatusNotifierItem over D-Bus with its menu over dbusmenu, or an XEmbed icon where no
//! watcher runs; the notification area on Windows; the menu bar on macOS) and `notify-rust`
//! for notifications. [`App::tick`], twice a second, is the same everywhere: it looks after the
//! agent ([`super::Supervisor`]), reads the agent's status, updates icon and menu, sends new
//! notices, and carries out the menu items clicked. Only the loop that calls it differs: GTK's
//! main loop on Linux, `tao`'s event loop (the Win32 message loop, NSApplication's run loop)
//! elsewhere; both are compiled on Linux, the `tao` one is run on the other platforms.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tray_icon::menu::{Menu, MenuEvent, MenuId, MenuItem};
use tray_icon::{Icon, TrayIcon, TrayIconBuilder};

use super::{Action, Control, IconState, Supervisor, View, notices, read_status, view};

/// Pixels of the icon's side.
const ICON_SIZE: u32 = 32;

fn icon(state: IconState) -> Result<Icon, String> {
    Icon::from_rgba(state.rgba(ICON_SIZE), ICON_SIZE, ICON_SIZE).map_err(|e| e.to_string())
}

/// The menu as shown: its items and what each does.
struct Shown {
    view: Option<View>,
    items: Vec<MenuItem>,
    actions: HashMap<MenuId, Action>,
}

impl Shown {
    /// Makes the menu say what `v` says: labels changed in place when the items are the same,
    /// else built again.
    fn show(&mut self, menu: &Menu, tray: &TrayIcon, v: &View) -> Result<(), String> {
        if self.view.as_ref() == Some(v) {
            return Ok(());
        }
        let same_shape = self.view.as_ref().is_some_and(|old| {
            old.items.len() == v.items.len()
                && old
                    .items
                    .iter()
                    .zip(&v.items)
                    .all(|(a, b)| a.action == b.action)
        });
        if same_shape {
            for (item, new) in self.items.iter().zip(&v.items) {
                let text = menu_text(&new.label);
                if item.text() != text {
                    item.set_text(&text);
                }
            }
        } else {
            for item in self.items.drain(..) {
                let _ = menu.remove(&item);
            }
            self.actions.clear();
            for line in &v.items {
                let item = MenuItem::new(menu_text(&line.label), line.action.is_some(), None);
                menu.append(&item).map_err(|e| e.to_string())?;
                if let Some(a) = &line.action {
                    self.actions.insert(item.id().clone(), a.clone());
                }
                self.items.push(item);
            }
        }
        if self.view.as_ref().map(|o| o.icon) != Some(v.icon) {
            tray.set_icon(Some(icon(v.icon)?))
                .map_err(|e| e.to_string())?;
        }
        let _ = tray.set_tooltip(Some(&v.tooltip));
        self.view = Some(v.clone());
        Ok(())
    }
}

/// A label as the menu takes it: `&` marks a mnemonic there, `&&` is a literal one
/// ("Harbour & Crane").
fn menu_text(label: &str) -> String {
    label.replace('&', "&&")
}

fn notify(summary: &str, body: &str) {
    let (summary, body) = (summary.to_owned(), body.to_owned());
    std::thread::spawn(move || {
        let shown = notify_rust::Notification::new()
            .appname("Sage Connector")
            .summary(&summary)
            .body(&body)
            .show();
        match shown {
            Ok(_) => tracing::info!(summary = %summary, "Showed a notification."),
            Err(e) => tracing::warn!(error = %e, "Could not show a notification."),
        }
    });
}

/// The tray: its icon and menu, the agent it runs, and what it has notified.
struct App {
    supervisor: Supervisor,
    state_dir: PathBuf,
    logs: PathBuf,
    menu: Menu,
    tray: TrayIcon,
    shown: Shown,
    sent: HashSet<(String, crate::protocol::Reason)>,
}

impl App {
    /// The icon (shown at once, "needs attention" until the agent reports) and the agent to
    /// run; call from the loop's thread once it runs.
    fn new(args: Vec<String>) -> Result<App, String> {
        let state_dir = super::state_dir_of(&args)
            .ok_or("no state folder: pass --state-dir DIR or set HOME / LOCALAPPDATA")?;
        let exe: PathBuf = std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name(format!("connector{}", std::env::consts::EXE_SUFFIX));
        let logs = state_dir.join("logs");
        let menu = Menu::new();
        let tray = TrayIconBuilder::new()
            .with_id("sage-connector")
            .with_menu(Box::new(menu.clone()))
            .with_tooltip("Sage Connector")
            .with_icon(icon(IconState::Attention)?)
            .build()
            .map_err(|e| format!("could not show the tray icon: {e}"))?;
        tracing::info!(state = %state_dir.display(), "The tray is running.");
        Ok(App {
            supervisor: Supervisor::new(exe, args, logs.join("agent.log")),
            state_dir,
            logs,
            menu,
            tray,
            shown: Shown {
                view: None,
                items: Vec::new(),
                actions: HashMap::new(),
            },
            sent: HashSet::new(),
        })
    }

    /// One look at everything; false once the user chose Quit (the agent is stopped).
    fn tick(&mut self) -> bool {
        self.supervisor.tick();
        let status = read_status(&self.state_dir).filter(|_| self.supervisor.down.is_none());
        let v = view(status.as_ref(), self.supervisor.down.as_deref());
        if let Err(e) = self.shown.show(&self.menu, &self.tray, &v) {
            tracing::warn!(error = %e, "Could not update the tray menu.");
        }
        if let Some(s) = &status {
            for n in notices(s, &mut self.sent) {
                notify(&n.summary, &n.body);
            }
        }
        while let Ok(event) = MenuEvent::receiver().try_recv() {
            let Some(action) = self.shown.actions.get(event.id()).cloned() else {
                tracing::debug!(id = ?event.id(), "A menu event for an item no longer shown.");
                continue;
            };
            tracing::info!(action = ?action, "A tray menu item was clicked.");
            match action {
                Action::Quit => {
                    self.stop();
                    return false;
                }
                Action::OpenLogs => super::open(&self.logs.display().to_string()),
                Action::OpenSettings => match Control::find(&self.state_dir) {
                    Some(c) => super::open(&c.settings_url),
                    None => tracing::warn!("The connector is not running: no settings page."),
                },
                other => match Control::find(&self.state_dir) {
                    Some(c) => {
                        std::thread::spawn(move || {
                            if let Err(e) = super::act(&c, &other) {
                                tracing::warn!(error = %e, "Could not reach the connector.");
                            }
                        });
                    }
                    None => tracing::warn!("The connector is not running."),
                },
            }
        }
        true
    }

    /// Stops the agent.
    fn stop(&mut self) {
        self.supervisor.stop();
        tracing::info!("The tray stopped.");
    }
}

/// Between two ticks.
const TICK: Duration = Duration::from_millis(500);

/// Calls `quit` once SIGTERM, SIGINT or Ctrl+C arrives (a thread of its own).
fn on_shutdown_signal(quit: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime can be built");
        rt.block_on(crate::server::shutdown_signal());
        quit();
    });
}

/// Runs the tray until Quit (or SIGTERM/SIGINT/Ctrl+C): `args` are those of `connector run`.
pub fn run(args: Vec<String>) -> Result<(), String> {
    #[cfg(target_os = "linux")]
    return run_gtk(args);
    #[cfg(not(target_os = "linux"))]
    return run_tao(args);
}

/// GTK's main loop (Linux).
#[cfg(target_os = "linux")]
fn run_gtk(args: Vec<String>) -> Result<(), String> {
    use std::cell::RefCell;
    use std::rc::Rc;
    gtk::init().map_err(|e| format!("could not open the desktop session (DISPLAY): {e}"))?;
    let app = Rc::new(RefCell::new(App::new(args)?));
    let (quit_tx, quit_rx) = std::sync::mpsc::channel::<()>();
    on_shutdown_signal(move || {
        let _ = quit_tx.send(());
    });
    gtk::glib::timeout_add_local(TICK, move || {
        let mut app = app.borrow_mut();
        if quit_rx.try_recv().is_ok() {
            app.stop();
            gtk::main_quit();
            return gtk::glib::ControlFlow::Break;
        }
        if app.tick() {
            gtk::glib::ControlFlow::Continue
        } else {
            gtk::main_quit();
            gtk::glib::ControlFlow::Break
        }
    });
    gtk::main();
    Ok(())
}

/// `tao`'s event loop (Windows, macOS; compiled, not run, on Linux).
#[cfg_attr(target_os = "linux", allow(dead_code))]
fn run_tao(args: Vec<String>) -> Result<(), String> {
    use tao::event::{Event, StartCause};
    use tao::event_loop::{ControlFlow, EventLoopBuilder};
    let event_loop = EventLoopBuilder::<()>::with_user_event().build();
    let proxy = event_loop.create_proxy();
    on_shutdown_signal(move || {
        let _ = proxy.send_event(());
    });
    let mut app: Option<App> = None;
    let mut args = Some(args);
    let mut next_tick = Instant::now();
    event_loop.run(move |event, _, control_flow| {
        match event {
            // (macOS wants the icon made once the loop runs)
            Event::NewEvents(StartCause::Init) => match App::new(args.take().unwrap_or_default()) {
                Ok(a) => app = Some(a),
                Err(e) => {
                    tracing::error!(error = %e, "Could not start the tray.");
                    *control_flow = ControlFlow::ExitWithCode(1);
                    return;
                }
            },
            Event::UserEvent(()) => {
                if let Some(a) = &mut app {
                    a.stop();
                }
                *control_flow = ControlFlow::Exit;
                return;
            }
            _ => {}
        }
        if Instant::now() >= next_tick
            && let Some(a) = &mut app
        {
            next_tick = Instant::now() + TICK;
            if !a.tick() {
                *control_flow = ControlFlow::Exit;
                return;
            }
        }
        *control_flow = ControlFlow::WaitUntil(next_tick);
    })
}
