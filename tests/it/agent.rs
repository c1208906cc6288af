//! The agent (`connector run`) as a real process: its schedule, requested syncs, pause, two
//! companies, a server that goes away and comes back, and revocation.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::desktop::{AgentProcess, World, link_and_set_up, syncs_started};
use crate::server::Server;
use crate::support::{Company, generated, golden};

/// A world with one linked, synced company.
fn linked(world: &World, sages: &[&Company]) -> (AgentProcess, Vec<String>) {
    let dirs: Vec<&std::path::Path> = sages.iter().map(|s| s.dir.as_path()).collect();
    let agent = world.agent(&dirs);
    let mut ids = Vec::new();
    for (i, sage) in sages.iter().enumerate() {
        let (id, link) = world.company(&format!("Company {i}"), "https://app.example/done");
        link_and_set_up(world, &agent, &id, &link, sage);
        ids.push(id);
    }
    (agent, ids)
}

fn hours_ago(h: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::hours(h))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[test]
fn a_daily_sync_missed_while_the_pc_was_off_runs_at_start_and_a_recent_one_waits() {
    let world = World::new(&[]);
    let dir = crate::support::tempdir();
    let a = golden(&dir.path().join("a"));
    let b = generated(&dir.path().join("b"), 3, 200);
    let (mut agent, ids) = linked(&world, &[&a, &b]);
    agent.stop();
    // Company 0 last synced 25 hours ago (the PC was off); company 1 an hour ago.
    agent.edit_config(|c| {
        c["companies"][0]["lastSuccess"] = json!(hours_ago(25));
        c["companies"][1]["lastSuccess"] = json!(hours_ago(1));
    });
    agent.restart();
    let c0 = agent.wait_for(&ids[0], "the missed sync", Duration::from_secs(20), |c| {
        c["syncsStarted"].as_u64() >= Some(1)
    });
    assert_eq!(c0["syncStartedBecause"], "missed", "{c0}");
    agent.wait_for(
        &ids[0],
        "the missed sync to finish",
        Duration::from_secs(60),
        |c| c["state"] == "up_to_date",
    );
    // Company 1 waits for its own due time, about 23 hours away.
    let c1 = agent.wait_for(&ids[1], "a scheduled time", Duration::from_secs(10), |c| {
        c["nextSyncAt"].is_string()
    });
    assert_eq!(syncs_started(&agent, &ids[1]), 0, "{c1}");
    assert_eq!(c1["waitingBecause"], "not_due", "{c1}");
    let next = chrono::DateTime::parse_from_rfc3339(c1["nextSyncAt"].as_str().unwrap()).unwrap();
    let left = next.with_timezone(&chrono::Utc) - chrono::Utc::now();
    assert!(
        left > chrono::Duration::hours(22) && left < chrono::Duration::hours(24),
        "{c1}"
    );
}

#[test]
fn quiet_hours_hold_a_scheduled_sync_but_not_one_the_client_asks_for() {
    let world = World::new(&[]);
    let sage = golden(&world.dir.path().join("sage"));
    let (mut agent, ids) = linked(&world, &[&sage]);
    let id = &ids[0];
    agent.stop();
    // Quiet hours around the local time now.
    let now = chrono::Local::now();
    let quiet = format!(
        "{}-{}",
        (now - chrono::Duration::hours(1)).format("%H:%M"),
        (now + chrono::Duration::hours(1)).format("%H:%M")
    );
    agent.edit_config(|c| {
        c["companies"][0]["lastSuccess"] = json!(hours_ago(30));
        c["companies"][0]["quiet"] = json!([quiet]);
    });
    agent.restart();
    let c = agent.wait_for(id, "a decision", Duration::from_secs(10), |c| {
        c["waitingBecause"].is_string()
    });
    assert_eq!(c["waitingBecause"], "quiet_hours", "{c}");
    // Three more decisions and still no sync.
    agent.wait_passes(3);
    assert_eq!(syncs_started(&agent, id), 0, "{}", agent.company(id));
    // The API client asks: that runs now.
    let (s, v, _) = world.server.call(
        "POST",
        Some(&world.key),
        &format!("/companies/{id}/sync"),
        None,
    );
    assert_eq!(s, 202, "{v}");
    let c = agent.wait_for(id, "the requested sync", Duration::from_secs(10), |c| {
        c["syncsStarted"].as_u64() >= Some(1)
    });
    assert_eq!(c["syncStartedBecause"], "requested");
}

#[test]
fn a_sync_requested_through_the_api_starts_within_five_seconds_unless_paused() {
    let world = World::new(&[]);
    let sage = golden(&world.dir.path().join("sage"));
    let (agent, ids) = linked(&world, &[&sage]);
    let id = &ids[0];
    let before = syncs_started(&agent, id);
    let asked = Instant::now();
    let (s, v, _) = world.server.call(
        "POST",
        Some(&world.key),
        &format!("/companies/{id}/sync"),
        None,
    );
    assert_eq!(s, 202, "{v}");
    agent.wait_for(id, "the requested sync", Duration::from_secs(10), |c| {
        c["syncsStarted"].as_u64() > Some(before)
    });
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the requested sync started after {took:?}"
    );
    agent.wait_for(id, "the sync to finish", Duration::from_secs(60), |c| {
        c["state"] == "up_to_date"
    });
    // Paused on the PC: a request waits, and runs once syncing resumes.
    let session = agent.session();
    let r = session.post("/settings/pause", json!({"company": id, "hours": 24}));
    assert_eq!(r.status, 200, "{}", r.body);
    agent.wait_for(id, "paused", Duration::from_secs(5), |c| {
        c["state"] == "paused"
    });
    let before = syncs_started(&agent, id);
    let asked = agent.said("The server asked for a sync.");
    world.server.call(
        "POST",
        Some(&world.key),
        &format!("/companies/{id}/sync"),
        None,
    );
    // The agent has the request, and decides three times with it.
    agent.wait_said(
        "The server asked for a sync.",
        asked + 1,
        Duration::from_secs(30),
    );
    agent.wait_passes(3);
    let c = agent.company(id);
    assert_eq!(
        c["syncsStarted"].as_u64(),
        Some(before),
        "a paused company synced: {c}"
    );
    assert_eq!(c["waitingBecause"], "paused", "{c}");
    session.post("/settings/pause", json!({"company": id, "hours": 0}));
    agent.wait_for(
        id,
        "the queued sync after resuming",
        Duration::from_secs(10),
        |c| c["syncsStarted"].as_u64() > Some(before),
    );
}

#[test]
fn a_snapshot_made_while_the_server_is_down_waits_and_is_published_when_it_returns() {
    let mut world = World::new(&[]);
    let sage = golden(&world.dir.path().join("sage"));
    let (agent, ids) = linked(&world, &[&sage]);
    let id = &ids[0];
    let first = world.server.wait_live(&world.key, id, None)["invoices"]["snapshotId"].clone();
    // The server goes away; the user asks for a sync on the PC; Sage changed meanwhile.
    let base = world.server.base.clone();
    let state = world.server.state.clone();
    let store = world.server.store.clone();
    world.server.stop();
    sage.sqlite()
        .execute("UPDATE SALES_LEDGER SET NAME = NAME || ' (renamed)'", [])
        .unwrap();
    let session = agent.session();
    session.post("/settings/sync-now", json!({"company": id}));
    // (between its retries: a retry under way shows `syncing`, with the same last error)
    agent.wait_for(id, "the offline sync", Duration::from_secs(60), |c| {
        c["lastError"] == "offline" && c["state"] == "failing"
    });
    let outbox = agent.state.join("companies").join(id).join("outbox");
    let waiting = std::fs::read_dir(&outbox).unwrap().count();
    assert!(waiting >= 1, "nothing waits in {}", outbox.display());
    // The server comes back on the same address: the agent sends the waiting snapshot.
    let port = base.rsplit(':').next().unwrap();
    world.server = Server::start(
        &state,
        &store,
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--loopback-port",
            &world.port.to_string(),
        ],
    );
    assert_eq!(world.server.base, base);
    agent.wait_for(id, "the outbox to drain", Duration::from_secs(90), |c| {
        c["state"] == "up_to_date"
    });
    let live = world.server.wait_live(&world.key, id, None);
    assert_ne!(live["invoices"]["snapshotId"], first, "{live}");
    let customers = world
        .server
        .ok(&world.key, &format!("/companies/{id}/data/customers"));
    assert!(
        customers["results"][0]["customerName"]
            .as_str()
            .unwrap()
            .ends_with("(renamed)"),
        "{customers}"
    );
}

#[test]
fn a_revoked_connector_stops_syncing_with_a_reason_and_the_client_hears_of_failures() {
    let world = World::new(&["--allow-private-webhooks"]);
    // The client's webhook receiver: every body it is sent.
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let keep = received.clone();
    let receiver = crate::webdriver::PageServer::start(move |_, _, body| {
        keep.lock().unwrap().push(body.to_owned());
        (204, Vec::new(), String::new())
    });
    let (s, v, _) = world.server.call(
        "POST",
        Some(&world.key),
        "/webhooks",
        Some(json!({"url": format!("{}/hook", receiver.base()), "eventTypes": ["sync.failed"]})),
    );
    assert_eq!(s, 201, "{v}");
    let sage = golden(&world.dir.path().join("sage"));
    let (agent, ids) = linked(&world, &[&sage]);
    let id = &ids[0];
    // A failing sync is reported: the client sees why (sync.failed is queued for webhooks).
    std::fs::rename(sage.dir.join("ACCDATA"), sage.dir.join("ACCDATA.moved")).unwrap();
    let session = agent.session();
    session.post("/settings/sync-now", json!({"company": id}));
    let c = agent.wait_for(id, "the failed sync", Duration::from_secs(30), |c| {
        c["lastError"] == "data_folder_not_found"
    });
    assert!(
        c["advice"].as_str().unwrap().contains("Help > About"),
        "{c}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let company = world.server.ok(&world.key, &format!("/companies/{id}"));
        if company["lastSyncResult"]["reason"] == "data_folder_not_found" {
            assert_eq!(company["lastSyncResult"]["ok"], false);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the failure was not reported: {company}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let bodies = received.lock().unwrap().clone();
        if let Some(b) = bodies.iter().find(|b| b.contains("sync.failed")) {
            let event: serde_json::Value = serde_json::from_str(b).unwrap();
            assert_eq!(event["data"]["companyId"], id.as_str(), "{event}");
            assert_eq!(event["data"]["reason"], "data_folder_not_found", "{event}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no sync.failed webhook: {bodies:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::fs::rename(sage.dir.join("ACCDATA.moved"), sage.dir.join("ACCDATA")).unwrap();
    // Revoked by the client: the agent stops that company with the reason.
    let devices = world
        .server
        .ok(&world.key, &format!("/companies/{id}/devices"));
    let last = &devices["results"][0]["status"];
    assert_eq!(
        last["connectorVersion"],
        env!("CARGO_PKG_VERSION"),
        "{devices}"
    );
    let device = devices["results"][0]["id"].as_str().unwrap();
    let (s, _, _) = world.server.call(
        "DELETE",
        Some(&world.key),
        &format!("/companies/{id}/devices/{device}"),
        None,
    );
    assert_eq!(s, 200);
    let c = agent.wait_for(id, "revocation", Duration::from_secs(20), |c| {
        c["state"] == "revoked"
    });
    assert_eq!(c["lastError"], "device_revoked", "{c}");
    assert!(agent.log().contains("revoked"), "{}", agent.log());
    let before = syncs_started(&agent, id);
    session.post("/settings/sync-now", json!({"company": id}));
    agent.wait_passes(3);
    assert_eq!(
        syncs_started(&agent, id),
        before,
        "a revoked company synced"
    );
}
