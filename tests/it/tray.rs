//! The tray app through the real protocols: Xvfb for GTK, a private D-Bus session bus
//! (`dbus-daemon`), a StatusNotifierWatcher and a notification server on it (this test's
//! own, served with zbus), the tray registering its StatusNotifierItem, its menu read and
//! clicked over dbusmenu, and the agent, run by the tray as its child, killed and restarted.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zbus::zvariant::{OwnedObjectPath, OwnedValue};

use crate::desktop::{
    AgentProcess, SIM_TEMPLATE, World, link_and_set_up, sage_root, syncs_started,
};
use crate::support::{golden, tempdir};

const TRAY: &str = env!("CARGO_BIN_EXE_connector-tray");

/// A process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Xvfb on a free display: (process, DISPLAY).
fn xvfb() -> (Killed, String) {
    for n in 90..140 {
        let lock = format!("/tmp/.X{n}-lock");
        let socket = format!("/tmp/.X11-unix/X{n}");
        // A lock whose Xvfb is gone (killed without cleaning up, by an earlier run) is stale:
        // its display is free again.
        let owner_alive = std::fs::read_to_string(&lock)
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok())
            .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if std::path::Path::new(&lock).exists() && !owner_alive {
            let _ = std::fs::remove_file(&lock);
            let _ = std::fs::remove_file(&socket);
        }
        if std::path::Path::new(&socket).exists() || std::path::Path::new(&lock).exists() {
            continue;
        }
        let child = Command::new("Xvfb")
            .args([
                &format!(":{n}"),
                "-screen",
                "0",
                "640x480x24",
                "-nolisten",
                "tcp",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Xvfb is installed (make deps)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::path::Path::new(&format!("/tmp/.X11-unix/X{n}")).exists() {
                return (Killed(child), format!(":{n}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(Killed(child));
    }
    panic!("no free X display for Xvfb");
}

/// A private session bus: (process, address).
fn session_bus() -> (Killed, String) {
    let mut child = Command::new("dbus-daemon")
        .args(["--session", "--nofork", "--print-address=1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("dbus-daemon is installed");
    let line = crate::support::first_line(&mut child);
    (Killed(child), line)
}

/// The StatusNotifierWatcher a desktop's panel runs: records who registered what.
#[derive(Default, Clone)]
struct Watcher {
    items: Arc<Mutex<Vec<(String, String)>>>,
}

#[zbus::interface(name = "org.kde.StatusNotifierWatcher")]
impl Watcher {
    fn register_status_notifier_item(
        &mut self,
        service: &str,
        #[zbus(header)] header: zbus::message::Header<'_>,
    ) {
        let sender = header.sender().map(|s| s.to_string()).unwrap_or_default();
        self.items
            .lock()
            .unwrap()
            .push((sender, service.to_owned()));
    }

    fn register_status_notifier_host(&mut self, _service: &str) {}

    #[zbus(property)]
    fn registered_status_notifier_items(&self) -> Vec<String> {
        self.items
            .lock()
            .unwrap()
            .iter()
            .map(|(s, p)| format!("{s}{p}"))
            .collect()
    }

    #[zbus(property)]
    fn is_status_notifier_host_registered(&self) -> bool {
        true
    }

    #[zbus(property)]
    fn protocol_version(&self) -> i32 {
        0
    }
}

/// A notification server: records every notification.
#[derive(Default, Clone)]
struct Notifications {
    shown: Arc<Mutex<Vec<(String, String)>>>,
}

#[zbus::interface(name = "org.freedesktop.Notifications")]
impl Notifications {
    #[allow(clippy::too_many_arguments)]
    fn notify(
        &mut self,
        _app_name: &str,
        _replaces_id: u32,
        _app_icon: &str,
        summary: &str,
        body: &str,
        _actions: Vec<String>,
        _hints: HashMap<String, OwnedValue>,
        _expire_timeout: i32,
    ) -> u32 {
        let mut shown = self.shown.lock().unwrap();
        shown.push((summary.to_owned(), body.to_owned()));
        shown.len() as u32
    }

    fn get_capabilities(&self) -> Vec<String> {
        vec!["body".into()]
    }

    fn get_server_information(&self) -> (String, String, String, String) {
        ("test".into(), "connector".into(), "1".into(), "1.2".into())
    }

    fn close_notification(&self, _id: u32) {}
}

/// A connection to the bus at `address` owning `name` and serving `object` at `path`.
fn serve(
    address: &str,
    name: &str,
    path: &str,
    object: impl zbus::object_server::Interface,
) -> zbus::blocking::Connection {
    zbus::blocking::connection::Builder::address(address)
        .unwrap()
        .name(name.to_owned())
        .unwrap()
        .serve_at(path.to_owned(), object)
        .unwrap()
        .build()
        .unwrap()
}

/// The registered item: (bus name, object path).
fn item(watcher: &Watcher, timeout: Duration) -> (String, String) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some((sender, service)) = watcher.items.lock().unwrap().first().cloned() {
            return if service.starts_with('/') {
                (sender, service)
            } else {
                (service, "/StatusNotifierItem".into())
            };
        }
        assert!(
            Instant::now() < deadline,
            "the tray never registered its item"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn proxy<'a>(
    bus: &zbus::blocking::Connection,
    dest: &'a str,
    path: &'a str,
    interface: &'a str,
) -> zbus::blocking::Proxy<'a> {
    zbus::blocking::Proxy::new(bus, dest, path, interface).unwrap()
}

/// The icon's main colour: the commonest opaque pixel that is not white.
fn icon_colour(bus: &zbus::blocking::Connection, (dest, path): &(String, String)) -> [u8; 3] {
    let icon: String = proxy(bus, dest, path, "org.kde.StatusNotifierItem")
        .get_property("IconName")
        .unwrap();
    let file = if icon.ends_with(".png") {
        std::path::PathBuf::from(&icon)
    } else {
        let dir: String = proxy(bus, dest, path, "org.kde.StatusNotifierItem")
            .get_property("IconThemePath")
            .unwrap();
        std::path::Path::new(&dir).join(format!("{icon}.png"))
    };
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&file).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let mut counts: HashMap<[u8; 3], usize> = HashMap::new();
    for px in buf[..info.buffer_size()].chunks(4) {
        if px[3] == 255 && px[..3] != [255, 255, 255] {
            *counts.entry([px[0], px[1], px[2]]).or_default() += 1;
        }
    }
    counts.into_iter().max_by_key(|(_, n)| *n).unwrap().0
}

/// A dbusmenu layout node: id, properties, children (each a node in a variant).
type Node = (i32, HashMap<String, OwnedValue>, Vec<OwnedValue>);

/// The menu's items: (id, label, enabled).
fn menu(
    bus: &zbus::blocking::Connection,
    (dest, path): &(String, String),
) -> Vec<(i32, String, bool)> {
    let menu_path: OwnedObjectPath = proxy(bus, dest, path, "org.kde.StatusNotifierItem")
        .get_property("Menu")
        .unwrap();
    let reply = proxy(bus, dest, menu_path.as_str(), "com.canonical.dbusmenu")
        .call_method("GetLayout", &(0i32, -1i32, Vec::<String>::new()))
        .unwrap();
    let (_rev, (_id, _props, children)): (u32, Node) = reply.body().deserialize().unwrap();
    children
        .into_iter()
        .map(|child| {
            let (id, props, _): Node = child.try_into().unwrap();
            let label = props
                .get("label")
                .and_then(|v| String::try_from(v.try_clone().unwrap()).ok())
                .unwrap_or_default()
                .replace('_', "");
            let enabled = props
                .get("enabled")
                .and_then(|v| bool::try_from(v.try_clone().unwrap()).ok())
                .unwrap_or(true);
            (id, label, enabled)
        })
        .collect()
}

/// Clicks a menu item over dbusmenu.
fn click(bus: &zbus::blocking::Connection, item: &(String, String), label: &str) {
    let items = menu(bus, item);
    let (id, _, enabled) = items
        .iter()
        .find(|(_, l, _)| l == label)
        .unwrap_or_else(|| panic!("no menu item {label:?} in {items:?}"));
    assert!(enabled, "{label} is disabled");
    let (dest, path) = item;
    let menu_path: OwnedObjectPath = proxy(bus, dest, path, "org.kde.StatusNotifierItem")
        .get_property("Menu")
        .unwrap();
    proxy(bus, dest, menu_path.as_str(), "com.canonical.dbusmenu")
        .call_method(
            "Event",
            &(*id, "clicked", zbus::zvariant::Value::from(0i32), 0u32),
        )
        .unwrap();
}

fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "waited {timeout:?} for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_tray_shows_state_over_dbus_its_menu_syncs_it_notifies_and_it_survives_an_agent_crash() {
    let (_x, display) = xvfb();
    let (_bus_daemon, address) = session_bus();
    let watcher = Watcher::default();
    let notes = Notifications::default();
    let bus = serve(
        &address,
        "org.kde.StatusNotifierWatcher",
        "/StatusNotifierWatcher",
        watcher.clone(),
    );
    let _notes_bus = serve(
        &address,
        "org.freedesktop.Notifications",
        "/org/freedesktop/Notifications",
        notes.clone(),
    );

    let world = World::new(&[]);
    let dir = tempdir();
    let sage = golden(&dir.path().join("a"));
    let root = sage_root(&world.dir.path().join("sage-root"), &[&sage.dir]);
    let state = world.dir.path().join("agent");
    let runtime = dir.path().join("runtime");
    std::fs::create_dir_all(&runtime).unwrap();
    let args: Vec<String> = [
        "--server",
        &world.server.base,
        "--port",
        &world.port.to_string(),
        "--odbc-template",
        SIM_TEMPLATE,
        "--checkin-wait-secs",
        "2",
        "--publish-timeout-secs",
        "2",
        "--state-dir",
        &state.display().to_string(),
        "--sage-root",
        &root.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut tray = AgentProcess::spawn_program(
        TRAY,
        &state,
        args,
        &[
            ("DISPLAY", display.clone()),
            ("DBUS_SESSION_BUS_ADDRESS", address.clone()),
            ("XDG_RUNTIME_DIR", runtime.display().to_string()),
            ("RUST_LOG", "info,connector::tray=debug".into()),
        ],
    );
    let (id, link) = world.company("Tray Co", "https://app.example/done");
    link_and_set_up(&world, &tray, &id, &link, &sage);

    // The item registered with the watcher; the icon turns green once up to date, and the
    // menu has a line for the company and its actions.
    let item = item(&watcher, Duration::from_secs(20));
    let green = [0x1e, 0x8e, 0x3e];
    wait("the icon to turn green", Duration::from_secs(20), || {
        icon_colour(&bus, &item) == green
    });
    let labels: Vec<String> = menu(&bus, &item).into_iter().map(|(_, l, _)| l).collect();
    assert!(
        labels[0].starts_with("Tray Co: up to date · last sync"),
        "{labels:?}"
    );
    assert_eq!(
        labels[1..],
        [
            "Sync now",
            "Pause syncing for 24 hours",
            "Open settings",
            "Open logs",
            "Quit"
        ],
    );

    // "Sync now", clicked over dbusmenu, starts a sync.
    let before = syncs_started(&tray, &id);
    click(&bus, &item, "Sync now");
    tray.wait_for(
        &id,
        "the sync the menu asked for",
        Duration::from_secs(30),
        |c| c["syncsStarted"].as_u64() > Some(before),
    );
    tray.wait_for(&id, "it to finish", Duration::from_secs(60), |c| {
        c["state"] == "up_to_date"
    });

    // Pause, then the menu offers Resume.
    click(&bus, &item, "Pause syncing for 24 hours");
    wait("Resume in the menu", Duration::from_secs(10), || {
        menu(&bus, &item)
            .iter()
            .any(|(_, l, _)| l == "Resume syncing")
    });
    assert_eq!(tray.company(&id)["state"], "paused");
    click(&bus, &item, "Resume syncing");
    tray.wait_for(&id, "resumed", Duration::from_secs(10), |c| {
        c["state"] != "paused"
    });

    // The agent crashes (killed): the tray says so, stays on the bus and restarts it.
    let pid = tray.status()["pid"].as_u64().unwrap();
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    wait(
        "the tray to say the connector stopped",
        Duration::from_secs(10),
        || {
            menu(&bus, &item)
                .iter()
                .any(|(_, l, _)| l.starts_with("The connector stopped unexpectedly"))
        },
    );
    wait("a new agent", Duration::from_secs(30), || {
        tray.status()["pid"].as_u64().is_some_and(|p| p != pid)
    });
    tray.wait_for(
        &id,
        "the restarted agent's status",
        Duration::from_secs(20),
        |c| c["state"] == "up_to_date",
    );
    assert_eq!(icon_colour(&bus, &item), green);

    // The connector is disconnected through the API: the user is notified.
    let (_, devices, _) = world.server.call(
        "GET",
        Some(&world.key),
        &format!("/companies/{id}/devices"),
        None,
    );
    let device = devices["results"][0]["id"].as_str().unwrap().to_owned();
    let (code, _, _) = world.server.call(
        "DELETE",
        Some(&world.key),
        &format!("/companies/{id}/devices/{device}"),
        None,
    );
    assert!(code < 300);
    wait("a notification", Duration::from_secs(30), || {
        !notes.shown.lock().unwrap().is_empty()
    });
    let (summary, body) = notes.shown.lock().unwrap()[0].clone();
    assert_eq!(summary, "Tray Co: the connector was disconnected");
    assert!(body.contains("Link it again"), "{body}");
    wait(
        "the icon to ask for attention",
        Duration::from_secs(10),
        || icon_colour(&bus, &item) == [0xe0, 0x6c, 0x00],
    );

    // Quit: the tray and its agent end.
    let agent_pid = tray.status()["pid"].as_u64().unwrap();
    click(&bus, &item, "Quit");
    wait("the agent to end", Duration::from_secs(20), || {
        !std::path::Path::new(&format!("/proc/{agent_pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{agent_pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    });
    wait("the tray to stop", Duration::from_secs(10), || {
        tray.log().contains("The tray stopped")
    });
    tray.stop();
}

#[test]
fn a_tray_started_while_the_agent_runs_shows_that_agent_instead_of_starting_another() {
    let (_x, display) = xvfb();
    let (_bus_daemon, address) = session_bus();
    let watcher = Watcher::default();
    let bus = serve(
        &address,
        "org.kde.StatusNotifierWatcher",
        "/StatusNotifierWatcher",
        watcher.clone(),
    );
    let world = World::new(&[]);
    let dir = tempdir();
    let sage = golden(&dir.path().join("a"));
    // The agent started at logon, headless; then the user opens the tray.
    let agent = world.agent(&[&sage.dir]);
    let (id, link) = world.company("Running Co", "https://app.example/done");
    link_and_set_up(&world, &agent, &id, &link, &sage);
    let runtime = dir.path().join("runtime");
    std::fs::create_dir_all(&runtime).unwrap();
    let tray_log = dir.path().join("tray.log");
    let mut args = agent.args.clone();
    args.remove(0); // `run`
    let tray = Killed(
        Command::new(TRAY)
            .args(&args)
            .env("DISPLAY", &display)
            .env("DBUS_SESSION_BUS_ADDRESS", &address)
            .env("XDG_RUNTIME_DIR", &runtime)
            .env("HOME", agent.state.join("home"))
            .env("RUST_LOG", "info,connector::tray=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&tray_log).unwrap())
            .spawn()
            .unwrap(),
    );
    let item = item(&watcher, Duration::from_secs(20));
    wait(
        "the running agent's company in the menu",
        Duration::from_secs(20),
        || {
            menu(&bus, &item)
                .first()
                .is_some_and(|(_, l, _)| l.starts_with("Running Co: up to date"))
        },
    );
    // It looks again a few seconds later, and still leaves the running agent alone.
    wait(
        "the tray to look at the running agent again",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(&tray_log)
                .unwrap()
                .contains("The connector agent this tray shows still answers.")
        },
    );
    let log = std::fs::read_to_string(&tray_log).unwrap();
    assert!(log.contains("already running"), "{log}");
    assert!(!log.contains("Started the connector agent"), "{log}");
    assert!(!log.contains("stopped unexpectedly"), "{log}");
    drop(tray);
}
