//! The tray's GUI glue (cargo feature `tray`): on Linux a GTK main loop with an app indicator
//! (StatusNotifierItem over D-Bus, its menu over dbusmenu; an XEmbed icon where no watcher
//! runs) through `tray-icon`, and notifications through `notify-rust`
//! (org.freedesktop.Notifications). Twice a second it looks after the agent
//! ([`super::Supervisor`]), reads the agent's status, updates icon and menu, sends new
//! notices, and carries out the menu items clicked.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

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

/// Runs the tray until Quit (or SIGTERM/SIGINT): `args` are those of `connector run`.
pub fn run(args: Vec<String>) -> Result<(), String> {
    let state_dir = super::state_dir_of(&args)
        .ok_or("no state folder: pass --state-dir DIR or set HOME / LOCALAPPDATA")?;
    let exe: PathBuf = std::env::current_exe()
        .map_err(|e| e.to_string())?
        .with_file_name(format!("connector{}", std::env::consts::EXE_SUFFIX));
    gtk::init().map_err(|e| format!("could not open the desktop session (DISPLAY): {e}"))?;
    let logs = state_dir.join("logs");
    let supervisor = Rc::new(RefCell::new(Supervisor::new(
        exe,
        args,
        logs.join("agent.log"),
    )));
    let menu = Menu::new();
    let tray = TrayIconBuilder::new()
        .with_id("sage-connector")
        .with_menu(Box::new(menu.clone()))
        .with_icon(icon(IconState::Attention)?)
        .with_tooltip("Sage Connector")
        .build()
        .map_err(|e| format!("could not show the tray icon: {e}"))?;
    let shown = Rc::new(RefCell::new(Shown {
        view: None,
        items: Vec::new(),
        actions: HashMap::new(),
    }));
    let sent = RefCell::new(HashSet::new());
    tracing::info!(state = %state_dir.display(), "The tray is running.");

    for signal in [libc_sigterm(), libc_sigint()] {
        let supervisor = supervisor.clone();
        gtk::glib::source::unix_signal_add_local(signal, move || {
            supervisor.borrow_mut().stop();
            gtk::main_quit();
            gtk::glib::ControlFlow::Break
        });
    }
    {
        let supervisor = supervisor.clone();
        gtk::glib::timeout_add_local(Duration::from_millis(500), move || {
            let mut sup = supervisor.borrow_mut();
            sup.tick();
            let status = read_status(&state_dir).filter(|_| sup.down.is_none());
            let v = view(status.as_ref(), sup.down.as_deref());
            if let Err(e) = shown.borrow_mut().show(&menu, &tray, &v) {
                tracing::warn!(error = %e, "Could not update the tray menu.");
            }
            if let Some(s) = &status {
                for n in notices(s, &mut sent.borrow_mut()) {
                    notify(&n.summary, &n.body);
                }
            }
            while let Ok(event) = MenuEvent::receiver().try_recv() {
                let Some(action) = shown.borrow().actions.get(event.id()).cloned() else {
                    continue;
                };
                tracing::info!(action = ?action, "A tray menu item was clicked.");
                match action {
                    Action::Quit => {
                        sup.stop();
                        gtk::main_quit();
                        return gtk::glib::ControlFlow::Break;
                    }
                    Action::OpenLogs => super::open(&logs.display().to_string()),
                    Action::OpenSettings => match Control::find(&state_dir) {
                        Some(c) => super::open(&c.settings_url),
                        None => tracing::warn!("The connector is not running: no settings page."),
                    },
                    other => match Control::find(&state_dir) {
                        Some(c) => {
                            std::thread::spawn(move || {
                                if let Err(e) = c.act(&other) {
                                    tracing::warn!(error = %e, "Could not reach the connector.");
                                }
                            });
                        }
                        None => tracing::warn!("The connector is not running."),
                    },
                }
            }
            gtk::glib::ControlFlow::Continue
        });
    }
    gtk::main();
    supervisor.borrow_mut().stop();
    tracing::info!("The tray stopped.");
    Ok(())
}

const fn libc_sigterm() -> i32 {
    15
}

const fn libc_sigint() -> i32 {
    2
}
