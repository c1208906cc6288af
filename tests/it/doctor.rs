//! "My data isn't updating" and data that moved, with real processes and real files: the
//! agent and `connector doctor` against a real server, Sage settings trees with `COMPANY`
//! files of several versions, a company folder moved to a second folder standing for a network
//! share, and a different company with the same name that must not be taken.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::desktop::{AgentProcess, World, free_port, link_and_set_up, syncs_started};
use crate::support::{CONNECTOR, generated, golden, tempdir};

/// `connector doctor --json` on the agent's state, with the agent's home.
fn doctor(agent: &AgentProcess, extra: &[&str], env: &[(&str, &str)]) -> (Output, Value) {
    let out = Command::new(CONNECTOR)
        .arg("doctor")
        .arg("--state-dir")
        .arg(&agent.state)
        .args(extra)
        .env("HOME", agent.state.join("home"))
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .envs(env.iter().copied())
        .output()
        .expect("run connector doctor");
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, report)
}

/// The finding of a check.
fn finding<'a>(report: &'a Value, check: &str) -> &'a Value {
    report["findings"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["check"] == check))
        .unwrap_or_else(|| panic!("no check {check} in {report}"))
}

/// A settings tree folder `ROOT/NAME/COMPANY` listing `companies`.
fn list_in(root: &Path, version_folder: &str, companies: &[&Path]) {
    let dir = root.join(version_folder);
    std::fs::create_dir_all(&dir).unwrap();
    let lines: Vec<String> = companies.iter().map(|c| c.display().to_string()).collect();
    std::fs::write(dir.join("COMPANY"), lines.join("\r\n") + "\r\n").unwrap();
}

/// `GET /companies/{id}/dataStatus`.
fn data_status(world: &World, id: &str) -> Value {
    world
        .server
        .call(
            "GET",
            Some(&world.key),
            &format!("/companies/{id}/dataStatus"),
            None,
        )
        .1
}

/// The ids of a data type's records at the server, once the snapshot is not `old`.
fn record_ids(
    world: &World,
    id: &str,
    data_type: &str,
    old: Option<&str>,
) -> (String, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = data_status(world, id);
        let snapshot = status[data_type]["snapshotId"].as_str().map(str::to_owned);
        if let Some(s) = snapshot.filter(|s| Some(s.as_str()) != old) {
            let (code, page, _) = world.server.call(
                "GET",
                Some(&world.key),
                &format!("/companies/{id}/data/{data_type}?pageSize=1000&orderBy=id&snapshot={s}"),
                None,
            );
            assert_eq!(code, 200, "{page}");
            let mut ids: Vec<String> = page["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_owned())
                .collect();
            ids.sort();
            return (s, ids);
        }
        assert!(
            Instant::now() < deadline,
            "no new snapshot of {id}: {status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn data_moved_to_another_version_is_found_by_company_id_and_re_pointed_once_confirmed() {
    // (the agent checks in at least every 5 s here: 12 s of silence is a stopped connector)
    let world = World::new(&["--allow-private-webhooks", "--connector-silence-secs", "12"]);
    // The client's webhook receiver, for company.status_changed.
    let received = Arc::new(Mutex::new(Vec::<Value>::new()));
    let keep = received.clone();
    let receiver = crate::webdriver::PageServer::start(move |_, _, body| {
        if let Ok(v) = serde_json::from_str(body) {
            keep.lock().unwrap().push(v);
        }
        (204, Vec::new(), String::new())
    });
    let (s, v, _) = world.server.call(
        "POST",
        Some(&world.key),
        "/webhooks",
        Some(json!({"url": format!("{}/hook", receiver.base()), "eventTypes": ["company.status_changed"]})),
    );
    assert_eq!(s, 201, "{v}");
    let event_with = |pred: &dyn Fn(&Value) -> bool, what: &str| -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(e) = received.lock().unwrap().iter().find(|e| pred(e)) {
                return e.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no {what} webhook: {:?}",
                received.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let dir = tempdir();
    let local = dir.path().join("local").join("Company.000");
    let sage = generated(&local, 1, 300);
    // Seed 4 makes a company with the same name and another COMPANYID: never to be taken.
    let impostor = generated(&dir.path().join("other").join("Company.001"), 4, 120);
    let name = |c: &crate::support::Company| -> (String, String) {
        c.sqlite()
            .query_row("SELECT NAME, COMPANYID FROM COMPANY", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap()
    };
    let (sage_name, sage_id) = name(&sage);
    let (impostor_name, impostor_id) = name(&impostor);
    assert_eq!(sage_name, impostor_name, "the impostor must share the name");
    assert_ne!(sage_id, impostor_id);

    let mut agent = world.agent(&[&sage.dir]);
    let (id, link) = world.company("Moving Co", "https://app.example/done");
    let session = link_and_set_up(&world, &agent, &id, &link, &sage);
    let (first, before) = record_ids(&world, &id, "invoices", None);
    assert!(!before.is_empty());

    // Sage was upgraded and the data moved to the server: a second folder stands for the
    // share. The newer version (V33) lists the impostor first, then the moved company; the
    // old version's COMPANY file still names the old folder.
    let share = dir
        .path()
        .join("share")
        .join("Accounts")
        .join("Company.000");
    std::fs::create_dir_all(share.parent().unwrap()).unwrap();
    std::fs::rename(&local, &share).unwrap();
    let agent_root = world.dir.path().join("sage-root");
    list_in(&agent_root, "V33", &[&impostor.dir, &share]);

    let started = syncs_started(&agent, &id);
    let answer = session.post("/settings/sync-now", json!({"company": id}));
    assert_eq!(answer.json()["ok"], true, "{}", answer.body);
    let moved = agent.wait_for(&id, "the move to be found", Duration::from_secs(90), |c| {
        c["state"] == "moved"
    });
    let share_accdata = share.join("ACCDATA").display().to_string();
    assert_eq!(moved["movedTo"], json!(share_accdata), "{moved}");
    assert!(syncs_started(&agent, &id) > started);
    let problems = moved["problems"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p["check"] == "data_folder" && p["reason"] == "data_moved"),
        "{moved}"
    );
    // Nothing syncs while the user has not confirmed.
    agent.wait_passes(3);
    assert_eq!(agent.company(&id)["state"], "moved");

    // The API client sees why at the next check-in.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = data_status(&world, &id);
        if status["invoices"]["connector"]["reason"] == "data_moved" {
            assert_eq!(status["invoices"]["connector"]["check"], "data_folder");
            assert!(
                status["invoices"]["connector"]["advice"]
                    .as_str()
                    .unwrap()
                    .contains("confirm the new folder"),
                "{status}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dataStatus never said why: {status}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // ... and its webhook receiver is told, with the reason.
    let failing = event_with(&|e| e["data"]["reason"] == "data_moved", "data_moved");
    assert_eq!(failing["type"], "company.status_changed", "{failing}");
    assert_eq!(failing["data"]["to"], "Failing", "{failing}");
    assert_eq!(failing["data"]["companyId"], json!(id), "{failing}");

    // The user confirms: same company, same records, no second company at the server.
    let answer = session.post("/settings/moved", json!({"company": id, "accept": true}));
    assert_eq!(
        answer.json()["dataFolder"],
        json!(share_accdata),
        "{}",
        answer.body
    );
    let done = agent.wait_for(
        &id,
        "a sync from the new folder",
        Duration::from_secs(90),
        |c| c["state"] == "up_to_date",
    );
    assert_eq!(done["dataFolder"], json!(share_accdata), "{done}");
    let config: Value = serde_json::from_slice(
        &std::fs::read(agent.state.join("agent").join("config.json")).unwrap(),
    )
    .unwrap();
    let setup = &config["companies"][0]["setup"];
    assert_eq!(setup["sageCompanyId"], json!(sage_id), "{setup}");
    assert_eq!(setup["version"], 33, "{setup}");
    let (second, after) = record_ids(&world, &id, "invoices", Some(&first));
    assert_ne!(first, second);
    assert_eq!(before, after, "the same company keeps its record ids");
    // The reason clears at the next check-in, and the client hears that too.
    let cleared = event_with(
        &|e| e["data"]["previousReason"] == "data_moved" && e["data"]["reason"].is_null(),
        "cleared",
    );
    assert_eq!(cleared["data"]["to"], "Fetched", "{cleared}");
    let (_, companies, _) = world
        .server
        .call("GET", Some(&world.key), "/companies", None);
    assert_eq!(
        companies["results"].as_array().unwrap().len(),
        1,
        "{companies}"
    );

    // The connector stops (the PC is off): the client hears `not_running`.
    agent.stop();
    let silent = event_with(&|e| e["data"]["reason"] == "not_running", "not_running");
    assert_eq!(silent["data"]["previousReason"], Value::Null, "{silent}");
    let status = data_status(&world, &id);
    assert_eq!(
        status["invoices"]["connector"]["reason"], "not_running",
        "{status}"
    );
}
#[test]
fn a_company_only_an_impostor_matches_is_not_taken_and_the_user_is_asked_for_the_path() {
    let world = World::new(&[]);
    let dir = tempdir();
    let local = dir.path().join("local").join("Company.000");
    let sage = generated(&local, 1, 150);
    let impostor = generated(&dir.path().join("other").join("Company.001"), 4, 120);
    let agent = world.agent(&[&sage.dir]);
    let (id, link) = world.company("Gone Co", "https://app.example/done");
    let _session = link_and_set_up(&world, &agent, &id, &link, &sage);
    std::fs::remove_dir_all(&local).unwrap();
    list_in(&world.dir.path().join("sage-root"), "V33", &[&impostor.dir]);
    let (out, report) = doctor(&agent, &["--json"], &[]);
    assert!(!out.status.success());
    let f = finding(&report, "data_folder");
    assert_eq!(f["reason"], "data_folder_not_found", "{report}");
    assert!(f["movedTo"].is_null(), "{report}");
    assert!(
        f["advice"].as_str().unwrap().contains("Help > About"),
        "{report}"
    );
    assert_eq!(finding(&report, "sage_login")["outcome"], "skipped");
}

/// A one-answer HTTP server on loopback whose clock is two hours behind.
fn server_with_a_wrong_clock() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in listener.incoming().take(4) {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 2048];
            let _ = stream.read(&mut buf);
            let date = (chrono::Utc::now() - chrono::Duration::hours(2))
                .format("%a, %d %b %Y %H:%M:%S GMT");
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nDate: {date}\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
            );
        }
    });
    format!("http://127.0.0.1:{port}")
}

/// An HTTPS server on loopback whose certificate is self-signed (what a proxy inspecting
/// traffic presents): its base URL, and the process.
fn server_with_an_untrusted_certificate(dir: &Path) -> (String, std::process::Child) {
    let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
        ])
        .arg("/CN=127.0.0.1")
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is installed (make deps)");
    assert!(made.status.success(), "{made:?}");
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(
            "import http.server, ssl, sys\n\
             s = http.server.HTTPServer(('127.0.0.1', 0), http.server.SimpleHTTPRequestHandler)\n\
             c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); c.load_cert_chain(sys.argv[1], sys.argv[2])\n\
             s.socket = c.wrap_socket(s.socket, server_side=True)\n\
             print(s.server_address[1], flush=True)\n\
             s.serve_forever()",
        )
        .arg(&cert)
        .arg(&key)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    (format!("https://127.0.0.1:{}", line.trim()), child)
}

#[test]
fn the_doctor_checks_in_order_and_names_the_check_that_failed_and_what_to_do() {
    let world = World::new(&[]);
    let dir = tempdir();
    let sage = golden(&dir.path().join("a"));
    let mut agent = world.agent(&[&sage.dir]);
    let (id, link) = world.company("Doctor Co", "https://app.example/done");
    let session = link_and_set_up(&world, &agent, &id, &link, &sage);

    // First run: the question is asked; the answer is honoured with a real autostart entry.
    assert!(agent.status()["startAtLogon"].is_null());
    let answer = session.post("/settings/start-at-logon", json!({"on": true}));
    assert_eq!(answer.json()["ok"], true, "{}", answer.body);
    let entry: PathBuf = agent
        .state
        .join("home/.config/autostart/sage-connector.desktop");
    let desktop = std::fs::read_to_string(&entry).expect("an XDG autostart entry");
    // the tray (built beside `connector`) with the agent's own arguments, folders absolute
    let exec = desktop
        .lines()
        .find_map(|l| l.strip_prefix("Exec="))
        .expect("an Exec line");
    assert!(
        exec.contains("connector-tray") && !exec.contains(" run "),
        "{exec}"
    );
    assert!(
        exec.contains(&format!("--server {}", world.server.base)),
        "{exec}"
    );
    assert!(
        exec.contains(&format!("--state-dir {}", agent.state.display())),
        "{exec}"
    );

    // All well: every check in its order, each ok.
    let (out, report) = doctor(&agent, &["--json"], &[]);
    let checks: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["check"].as_str().unwrap())
        .collect();
    assert_eq!(
        checks,
        [
            "agent",
            "start_at_logon",
            "server",
            "credential",
            "data_folder",
            "odbc_driver",
            "sage_login",
            "disk_space",
            "last_sync"
        ]
    );
    assert!(out.status.success(), "{report}");
    for f in report["findings"].as_array().unwrap() {
        assert_eq!(f["outcome"], "ok", "{f}");
    }
    // The settings page's button runs the same checks.
    let page = session.post("/settings/doctor", json!({}));
    assert_eq!(
        page.json()["findings"].as_array().unwrap().len(),
        checks.len(),
        "{}",
        page.body
    );

    // Too little disk space: named, with what to do, and the exit status says so.
    let (out, report) = doctor(
        &agent,
        &[],
        &[("CONNECTOR_MIN_FREE_BYTES", "1000000000000000000")],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(text.contains("PROBLEM disk_space"), "{text}");
    assert!(
        text.contains("What to do: This PC is almost out of disk space"),
        "{text}"
    );
    assert!(report.is_null());

    // A server nothing answers: offline, and the credential is not tried.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let (_, report) = doctor(&agent, &["--json", "--server", &closed], &[]);
    assert_eq!(finding(&report, "server")["reason"], "offline", "{report}");
    assert_eq!(finding(&report, "credential")["outcome"], "skipped");

    // A server whose clock is two hours away.
    let (_, report) = doctor(
        &agent,
        &["--json", "--server", &server_with_a_wrong_clock()],
        &[],
    );
    let f = finding(&report, "server");
    assert_eq!(f["reason"], "clock_skew", "{report}");
    assert!(
        f["found"].as_str().unwrap().contains("120 minutes ahead"),
        "{f}"
    );

    // A certificate this PC does not trust (a proxy inspecting traffic): tls_failed.
    let (https, mut tls_server) = server_with_an_untrusted_certificate(dir.path());
    let (_, report) = doctor(&agent, &["--json", "--server", &https], &[]);
    let _ = tls_server.kill();
    let _ = tls_server.wait();
    assert_eq!(
        finding(&report, "server")["reason"],
        "tls_failed",
        "{report}"
    );

    // The agent stopped and the Sage driver of another version: both named.
    agent.stop();
    agent.edit_config(|c| {
        let odbc = c["companies"][0]["setup"]["odbc"]
            .as_str()
            .unwrap()
            .to_owned();
        c["companies"][0]["setup"]["odbc"] = json!(odbc.replace("{SQLite3}", "{Sage Line 50 v99}"));
    });
    let (out, report) = doctor(&agent, &["--json"], &[]);
    assert!(!out.status.success());
    assert_eq!(
        finding(&report, "agent")["reason"],
        "not_running",
        "{report}"
    );
    let f = finding(&report, "odbc_driver");
    assert_eq!(f["reason"], "driver_missing", "{report}");
    let found = f["found"].as_str().unwrap();
    assert!(
        found.contains("Sage Line 50 v99") && found.contains("SQLite3"),
        "{found}"
    );
}

#[test]
fn the_trays_control_routes_take_only_the_ticket_and_no_web_page() {
    let world = World::new(&[]);
    let dir = tempdir();
    let sage = golden(&dir.path().join("a"));
    let agent = world.agent(&[&sage.dir]);
    let (id, link) = world.company("Control Co", "https://app.example/done");
    let _session = link_and_set_up(&world, &agent, &id, &link, &sage);
    let url = std::fs::read_to_string(agent.state.join("agent").join("settings-url")).unwrap();
    let ticket = url.trim().split("ticket=").nth(1).unwrap().to_owned();
    let host = format!("127.0.0.1:{}", agent.port);
    let post = |headers: &[(&str, &str)]| {
        crate::desktop::http(
            "POST",
            &format!("{}/control/sync-now", agent.base),
            headers,
            Some("{}".into()),
        )
        .status
    };
    let json_type = ("content-type", "application/json");
    assert_eq!(post(&[json_type]), 403, "no ticket");
    assert_eq!(post(&[json_type, ("x-connector-ticket", "wrong")]), 403);
    assert_eq!(
        post(&[
            json_type,
            ("x-connector-ticket", &ticket),
            ("origin", "https://evil.example")
        ]),
        403,
        "a web page"
    );
    assert_eq!(
        post(&[
            json_type,
            ("x-connector-ticket", &ticket),
            ("host", "evil.example")
        ]),
        421,
        "DNS rebinding"
    );
    let before = syncs_started(&agent, &id);
    assert_eq!(
        post(&[json_type, ("x-connector-ticket", &ticket), ("host", &host)]),
        200
    );
    agent.wait_for(
        &id,
        "the sync the tray asked for",
        Duration::from_secs(30),
        |c| c["syncsStarted"].as_u64() > Some(before),
    );
}

#[test]
fn a_declined_move_is_not_proposed_again_and_a_folder_holding_another_company_is_refused() {
    let world = World::new(&[]);
    let dir = tempdir();
    let local = dir.path().join("local").join("Company.000");
    let sage = generated(&local, 1, 150);
    let agent = world.agent(&[&sage.dir]);
    let (id, link) = world.company("Declined Co", "https://app.example/done");
    let session = link_and_set_up(&world, &agent, &id, &link, &sage);
    let copy = dir.path().join("copy").join("Company.000");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    std::fs::rename(&local, &copy).unwrap();
    list_in(&world.dir.path().join("sage-root"), "V33", &[&copy]);
    session.post("/settings/sync-now", json!({"company": id}));
    agent.wait_for(&id, "the move to be found", Duration::from_secs(90), |c| {
        c["state"] == "moved"
    });
    // "No": not this folder; it is not proposed again at the next failed sync.
    let answer = session.post("/settings/moved", json!({"company": id, "accept": false}));
    assert_eq!(answer.json()["ok"], true, "{}", answer.body);
    let c = agent.company(&id);
    assert_eq!(c["lastError"], "data_folder_not_found", "{c}");
    let started = syncs_started(&agent, &id);
    session.post("/settings/sync-now", json!({"company": id}));
    agent.wait_for(
        &id,
        "another failed sync and its checks",
        Duration::from_secs(60),
        |c| {
            c["syncsStarted"].as_u64() > Some(started)
                && c["state"] == "failing"
                && c["problems"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|p| p["reason"] == "data_folder_not_found"))
        },
    );
    assert!(agent.company(&id)["movedTo"].is_null());

    // Another company put in the original folder (Sage reuses Company.000): refused.
    generated(&local, 4, 100);
    let started = syncs_started(&agent, &id);
    session.post("/settings/sync-now", json!({"company": id}));
    let c = agent.wait_for(&id, "the refused sync", Duration::from_secs(60), |c| {
        c["syncsStarted"].as_u64() > Some(started) && c["lastError"] == "other_company"
    });
    assert!(
        c["lastMessage"]
            .as_str()
            .unwrap()
            .contains("another company"),
        "{c}"
    );
}
