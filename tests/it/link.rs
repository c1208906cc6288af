//! Linking over real HTTP: the server's link page and exchanges, the agent's loopback
//! listener, device credentials, and the attacks each must refuse.

use std::time::Duration;

use serde_json::json;

use crate::desktop::{World, free_port, http, link_and_set_up, param};
use crate::support::{generated, golden, tempdir, text};

#[test]
fn linking_over_loopback_links_sets_up_syncs_and_serves_with_no_api_key_on_the_desktop() {
    let world = World::new(&[]);
    let sage = golden(&world.dir.path().join("sage"));
    let agent = world.agent(&[&sage.dir]);
    let (id, link_url) = world.company("Golden Café Ltd", "https://app.example/done");
    // The link page names the company and carries the button.
    let page = http("GET", &link_url, &[], None);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Golden Café Ltd") && page.body.contains("id=\"connect\""));
    link_and_set_up(&world, &agent, &id, &link_url, &sage);
    let status = world.server.wait_live(&world.key, &id, None);
    assert_eq!(status["invoices"]["recordCount"], 7, "{status}");
    let company = agent.company(&id);
    assert_eq!(company["sageCompany"], "Golden Café Ltd", "{company}");
    assert_eq!(
        company["returnUrl"],
        format!("https://app.example/done?companyId={id}&status=linked")
    );
    // The link is used up.
    assert_eq!(http("GET", &link_url, &[], None).status, 410);
    // The server knows the device and what it last said.
    let devices = world
        .server
        .ok(&world.key, &format!("/companies/{id}/devices"));
    assert_eq!(devices["results"].as_array().unwrap().len(), 1, "{devices}");
    // No API key, and no device credential in clear outside the secret store's own file.
    for entry in walk(&agent.state) {
        let bytes = std::fs::read(&entry).unwrap();
        let found = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
        assert!(!found(&world.key), "the API key is in {}", entry.display());
        if !entry.ends_with("secrets.json") {
            assert!(
                !found("dv_dev"),
                "a device credential is in {}",
                entry.display()
            );
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(agent.state.join("secrets.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "secrets.json is readable by others");
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn the_loopback_listener_refuses_other_hosts_origins_and_requests_without_the_token() {
    let world = World::new(&[]);
    let sage = golden(&world.dir.path().join("sage"));
    let agent = world.agent(&[&sage.dir]);
    let (id, link_url) = world.company("Acme", "https://app.example/done");
    let loopback = world.start_link(&link_url);
    let answer = http("GET", &loopback, &[], None);
    assert_eq!(answer.status, 303, "{}", answer.body);
    let session = crate::desktop::Session::from_redirect(&agent, &answer);
    let sync = |headers: &[(&str, &str)]| {
        http(
            "POST",
            &format!("{}/settings/sync-now", agent.base),
            headers,
            Some(json!({"company": id}).to_string()),
        )
    };
    let json_type = ("content-type", "application/json");
    let origin = agent.base.clone();
    // DNS rebinding: the attacker's name resolves to 127.0.0.1, so its Host is its own.
    let rebinding = format!("evil.example:{}", agent.port);
    let r = http(
        "GET",
        &format!("{}/settings", agent.base),
        &[("host", &rebinding), ("cookie", &session.cookie)],
        None,
    );
    assert_eq!(r.status, 421, "{}", r.body);
    let r = sync(&[
        ("host", &rebinding),
        ("cookie", &session.cookie),
        ("x-connector-token", &session.token),
        ("origin", &origin),
        json_type,
    ]);
    assert_eq!(r.status, 421);
    // Another site's page posting to the listener.
    let r = sync(&[
        ("cookie", &session.cookie),
        ("x-connector-token", &session.token),
        ("origin", "https://evil.example"),
        json_type,
    ]);
    assert_eq!(r.status, 403, "{}", r.body);
    let r = sync(&[
        ("cookie", &session.cookie),
        ("x-connector-token", &session.token),
        json_type,
    ]);
    assert_eq!(r.status, 403, "no Origin: {}", r.body);
    // A form post without the session's token, or with a wrong one, or without the session.
    let r = sync(&[("cookie", &session.cookie), ("origin", &origin), json_type]);
    assert_eq!(r.status, 403, "{}", r.body);
    let r = sync(&[
        ("cookie", &session.cookie),
        ("x-connector-token", "0000"),
        ("origin", &origin),
        json_type,
    ]);
    assert_eq!(r.status, 403);
    let r = sync(&[
        ("x-connector-token", &session.token),
        ("origin", &origin),
        json_type,
    ]);
    assert_eq!(r.status, 401);
    // The settings page and its state need the session.
    assert_eq!(
        http(
            "GET",
            &format!("{}/settings/state.json", agent.base),
            &[],
            None
        )
        .status,
        401
    );
    // No CORS, framing refused, nothing else on the port.
    let r = sync(&[
        ("cookie", &session.cookie),
        ("x-connector-token", &session.token),
        ("origin", &origin),
        json_type,
    ]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.header("access-control-allow-origin").is_none());
    assert_eq!(r.header("x-frame-options").as_deref(), Some("DENY"));
    assert_eq!(
        http("GET", &format!("{}/", agent.base), &[], None).status,
        404
    );
    assert_eq!(
        http(
            "GET",
            &format!("{}/open?ticket=guess", agent.base),
            &[],
            None
        )
        .status,
        403
    );
    // A replayed loopback code links nothing and changes nothing.
    let replay = http("GET", &loopback, &[], None);
    assert_eq!(replay.status, 400, "{}", replay.body);
    assert!(replay.body.contains("already used"), "{}", replay.body);
    assert!(replay.header("set-cookie").is_none());
}

/// The server's redeem route, called as a connector would.
fn redeem(world: &World, code: &str, state: &str, company: &str) -> crate::desktop::Answer {
    http(
        "POST",
        &format!("{}/connector/link", world.server.base),
        &[("content-type", "application/json")],
        Some(
            json!({"code": code, "state": state, "companyId": company, "deviceName": "test"})
                .to_string(),
        ),
    )
}

#[test]
fn link_codes_are_single_use_short_lived_and_bound_to_their_state_and_company() {
    let world = World::new(&["--link-ttl-secs", "3"]);
    let (a, link_a) = world.company("A", "https://app.example/a");
    let (b, link_b) = world.company("B", "https://app.example/b");
    // A code for another company is refused (and burnt).
    let to_a = world.start_link(&link_a);
    let r = redeem(&world, &param(&to_a, "code"), &param(&to_a, "state"), &b);
    assert_eq!(r.status, 400);
    assert!(r.body.contains("another company"), "{}", r.body);
    let r = redeem(&world, &param(&to_a, "code"), &param(&to_a, "state"), &a);
    assert_eq!(r.status, 400, "a burnt code was accepted: {}", r.body);
    // A wrong state is refused.
    let to_a = world.start_link(&link_a);
    let r = redeem(&world, &param(&to_a, "code"), "not-the-state", &a);
    assert_eq!(r.status, 400);
    assert!(r.body.contains("state"), "{}", r.body);
    // The right code works once; its replay does not.
    let to_a = world.start_link(&link_a);
    let ok = redeem(&world, &param(&to_a, "code"), &param(&to_a, "state"), &a);
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(ok.json()["credential"].as_str().unwrap().starts_with("dv_"));
    assert_eq!(ok.json()["redirectUrl"], "https://app.example/a");
    let again = redeem(&world, &param(&to_a, "code"), &param(&to_a, "state"), &a);
    assert_eq!(again.status, 400);
    // The link itself is used up.
    let r = http(
        "POST",
        &format!("{link_a}/start"),
        &[("content-type", "application/x-www-form-urlencoded")],
        Some("port=47815".into()),
    );
    assert_eq!(r.status, 410);
    // An expired code (its link expired after 3 s).
    let to_b = world.start_link(&link_b);
    std::thread::sleep(Duration::from_millis(3500));
    let r = redeem(&world, &param(&to_b, "code"), &param(&to_b, "state"), &b);
    assert_eq!(r.status, 400);
    assert!(r.body.contains("expired"), "{}", r.body);
    // A guessed code.
    let r = redeem(&world, &"ab".repeat(32), "x", &b);
    assert_eq!(r.status, 400);
}

/// A device credential for a new company, through the link page's exchange.
fn credential(world: &World, name: &str) -> (String, String) {
    let (id, link) = world.company(name, "https://app.example/x");
    let to = world.start_link(&link);
    let r = redeem(world, &param(&to, "code"), &param(&to, "state"), &id);
    assert_eq!(r.status, 200, "{}", r.body);
    (id, r.json()["credential"].as_str().unwrap().to_owned())
}

#[test]
fn a_device_credential_reaches_only_its_own_company_and_no_client_route() {
    let world = World::new(&[]);
    let (a, cred_a) = credential(&world, "A");
    let (b, _) = credential(&world, "B");
    let base = &world.server.base;
    let call = |method: &str, path: &str, token: &str| {
        http(
            method,
            &format!("{base}{path}"),
            &[
                ("authorization", &format!("Bearer {token}")),
                ("content-type", "application/json"),
            ],
            Some("{}".into()),
        )
    };
    assert_eq!(
        call("GET", &format!("/companies/{a}/connector/latest"), &cred_a).status,
        200
    );
    for what in ["latest", "checkin", "grants", "commit", "result"] {
        let method = if what == "latest" { "GET" } else { "POST" };
        let r = call(method, &format!("/companies/{b}/connector/{what}"), &cred_a);
        assert_eq!(r.status, 404, "{what} on another company: {}", r.body);
    }
    for path in [
        "/companies".to_owned(),
        format!("/companies/{a}"),
        format!("/companies/{a}/data/invoices"),
        format!("/companies/{a}/dataStatus"),
        "/webhooks".to_owned(),
    ] {
        assert_eq!(call("GET", &path, &cred_a).status, 401, "{path}");
    }
    assert_eq!(call("POST", "/webhooks", &cred_a).status, 401);
    assert_eq!(
        call("POST", &format!("/companies/{a}/sync"), &cred_a).status,
        401
    );
    // The client's API key is not a device credential.
    let r = call(
        "POST",
        &format!("/companies/{a}/connector/checkin"),
        &world.key,
    );
    assert_eq!(r.status, 401);
    // Revoked through the API: the credential stops at once, with the reason.
    let devices = world
        .server
        .ok(&world.key, &format!("/companies/{a}/devices"));
    let device = devices["results"][0]["id"].as_str().unwrap().to_owned();
    let (s, v, _) = world.server.call(
        "DELETE",
        Some(&world.key),
        &format!("/companies/{a}/devices/{device}"),
        None,
    );
    assert_eq!(s, 200, "{v}");
    let r = call("GET", &format!("/companies/{a}/connector/latest"), &cred_a);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["reason"], "device_revoked", "{}", r.body);
}

#[test]
fn a_device_credential_is_rotated_at_check_in_and_the_old_one_retires_after_the_new_ones_use() {
    let world = World::new(&["--rotate-after-secs", "0"]);
    let (id, old) = credential(&world, "A");
    let checkin = |cred: &str| {
        http(
            "POST",
            &format!("{}/companies/{id}/connector/checkin", world.server.base),
            &[
                ("authorization", &format!("Bearer {cred}")),
                ("content-type", "application/json"),
            ],
            Some(json!({"connectorVersion": "t", "os": "linux"}).to_string()),
        )
    };
    let first = checkin(&old);
    assert_eq!(first.status, 200, "{}", first.body);
    let new = first.json()["credential"]
        .as_str()
        .expect("rotated")
        .to_owned();
    assert_ne!(new, old);
    // Until the new one is used, the old one still works (the answer may have been lost).
    assert_eq!(checkin(&old).status, 200);
    let newest = checkin(&old).json()["credential"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(checkin(&newest).status, 200);
    // The previous one keeps a short grace for requests under way, then is refused; a
    // credential replaced before it was ever used is refused at once.
    assert_eq!(
        checkin(&new).status,
        401,
        "a never-used rotation still works"
    );
}

#[test]
fn the_device_code_path_links_a_connector_whose_browser_is_elsewhere() {
    let world = World::new(&[]);
    let sage = golden(&world.dir.path().join("sage"));
    let agent = world.agent(&[&sage.dir]);
    let (id, link_url) = world.company("Remote Ltd", "https://app.example/done");
    let session = agent.session();
    let code = session.post("/settings/link-code", json!({}));
    assert_eq!(code.status, 200, "{}", code.body);
    let user_code = code.json()["userCode"].as_str().unwrap().to_owned();
    assert_eq!(user_code.len(), 9, "{user_code}");
    // A wrong code is refused on the link page; the right one (typed lower-case) links.
    let typed = |c: &str| {
        http(
            "POST",
            &format!("{link_url}/code"),
            &[("content-type", "application/x-www-form-urlencoded")],
            Some(format!("user_code={c}")),
        )
    };
    assert_eq!(typed("BBBB-BBBB").status, 400);
    let ok = typed(&user_code.to_lowercase());
    assert_eq!(ok.status, 200, "{}", ok.body);
    agent.wait_for(&id, "the linked company", Duration::from_secs(20), |c| {
        c["state"] == "needs_setup"
    });
    // Set up through the settings page, as on the PC with Sage.
    let confirm = session.post(
        "/settings/confirm",
        json!({"company": id, "path": sage.dir.display().to_string(), "user": "", "password": ""}),
    );
    assert_eq!(confirm.json()["ok"], true, "{}", confirm.body);
    agent.wait_for(&id, "the first sync", Duration::from_secs(60), |c| {
        c["state"] == "up_to_date"
    });
    world.server.wait_live(&world.key, &id, None);
}

#[test]
fn test_shows_what_sage_says_or_exactly_what_is_wrong() {
    let world = World::new(&[]);
    let dir = tempdir();
    let sage = generated(&dir.path().join("sage"), 7, 300);
    let agent = world.agent(&[&sage.dir]);
    let (id, link_url) = world.company("Sim Ltd", "https://app.example/done");
    let answer = http("GET", &world.start_link(&link_url), &[], None);
    let session = crate::desktop::Session::from_redirect(&agent, &answer);
    // The drop-down lists the company from the COMPANY file.
    let state = http(
        "GET",
        &format!("{}/settings/state.json", agent.base),
        &[("cookie", &session.cookie)],
        None,
    )
    .json();
    assert_eq!(
        state["sageCompanies"][0]["dataDir"],
        sage.dir.display().to_string(),
        "{state}"
    );
    let ok = session.post(
        "/settings/test",
        json!({"company": id, "path": state["sageCompanies"][0]["accdata"], "user": "", "password": ""}),
    );
    let (name, last): (String, String) = sage
        .sqlite()
        .query_row(
            "SELECT (SELECT NAME FROM COMPANY), (SELECT MAX(DATE) FROM AUDIT_HEADER)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let v = ok.json();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["probe"]["companyName"], name);
    assert_eq!(v["probe"]["lastTransactionDate"], last[..10]);
    assert_eq!(v["sageVersion"], "Sage Line 50 v32");
    // A folder that is not there: the README's words, and its reason code.
    let missing = session.post(
        "/settings/test",
        json!({"company": id, "path": dir.path().join("moved").display().to_string()}),
    );
    let v = missing.json();
    assert_eq!(v["ok"], false);
    assert_eq!(v["reason"], "data_folder_not_found", "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("Sage data folder not found"),
        "{v}"
    );
    // Confirm refuses what Test refuses, and saves nothing.
    let v = session
        .post(
            "/settings/confirm",
            json!({"company": id, "path": dir.path().join("moved").display().to_string()}),
        )
        .json();
    assert_eq!(v["ok"], false);
    assert_eq!(agent.company(&id)["state"], "needs_setup");
}

#[test]
fn connector_sync_publishes_through_the_server_with_a_device_credential() {
    let world = World::new(&["--poll-secs", "3600"]);
    let (id, cred) = credential(&world, "Told Ltd");
    let sage = golden(&world.dir.path().join("sage"));
    let run = || {
        std::process::Command::new(crate::support::CONNECTOR)
            .args([
                "sync",
                "--odbc",
                &sage.odbc,
                "--company",
                &id,
                "--server",
                &world.server.base,
                "--credential-env",
                "TEST_DEVICE",
                "--state-dir",
            ])
            .arg(world.dir.path().join("connector"))
            .env("TEST_DEVICE", &cred)
            .output()
            .unwrap()
    };
    let out = run();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !text(&out).contains(&cred),
        "the credential appeared in the output"
    );
    // Committed through the server: it is live at once, without waiting for a poll.
    let started = std::time::Instant::now();
    let status = world.server.wait_live(&world.key, &id, None);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(status["invoices"]["recordCount"], 7);
    // Nothing changed: no data file is sent again.
    let out = run();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("0 file(s) uploaded (0 bytes)"),
        "{}",
        text(&out)
    );
}

#[test]
fn the_server_refuses_a_commit_whose_files_are_not_what_the_manifest_says() {
    let world = World::new(&[]);
    let (id, cred) = credential(&world, "A");
    let (other, _) = credential(&world, "B");
    let sage = golden(&world.dir.path().join("sage"));
    // A real snapshot published straight to the store gives a real manifest to tamper with.
    crate::support::sync_ok(
        &sage.odbc,
        &id,
        &world.dir.path().join("c"),
        Some(&world.server.store),
        &[],
    );
    let latest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(world.store_dir.join(&id).join("latest.json")).unwrap(),
    )
    .unwrap();
    let manifest_path = world
        .store_dir
        .join(latest["manifestKey"].as_str().unwrap());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    let commit = |m: &serde_json::Value| {
        http(
            "POST",
            &format!("{}/companies/{id}/connector/commit", world.server.base),
            &[
                ("authorization", &format!("Bearer {cred}")),
                ("content-type", "application/json"),
            ],
            Some(m.to_string()),
        )
    };
    let newer = |m: &mut serde_json::Value| {
        let sid = m["snapshotId"].as_str().unwrap().to_owned();
        m["snapshotId"] = json!(format!("{}{}", &sid[..sid.len() - 8], "ffffffff"));
    };
    // A file the store does not have (its hash changed).
    let mut bad = manifest.clone();
    newer(&mut bad);
    bad["dataTypes"]["invoices"]["files"][0]["sha256"] = json!("0".repeat(64));
    let r = commit(&bad);
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("invoices"), "{}", r.body);
    // A file of another company.
    let mut bad = manifest.clone();
    newer(&mut bad);
    let key = bad["dataTypes"]["invoices"]["files"][0]["key"]
        .as_str()
        .unwrap()
        .replace(&id, &other);
    bad["dataTypes"]["invoices"]["files"][0]["key"] = json!(key);
    assert_eq!(commit(&bad).status, 422);
    // A manifest of another company.
    let mut bad = manifest.clone();
    newer(&mut bad);
    bad["companyId"] = json!(other);
    assert_eq!(commit(&bad).status, 422);
    // latest did not move.
    let read_latest = || -> serde_json::Value {
        serde_json::from_slice(
            &std::fs::read(world.store_dir.join(&id).join("latest.json")).unwrap(),
        )
        .unwrap()
    };
    assert_eq!(read_latest(), latest);
    // A good commit the server cannot keep a copy of (its cache folder for the company is a
    // file now, as a full or broken disk would refuse it) is not refused: 503, retry later,
    // nothing committed; the same commit lands once the server's disk is well.
    let cache = world.server.state.join("cache").join(&id);
    std::fs::remove_dir_all(&cache).unwrap();
    std::fs::write(&cache, b"not a folder").unwrap();
    let mut good = manifest.clone();
    newer(&mut good);
    let r = commit(&good);
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    assert!(r.body.contains("nothing was committed"), "{}", r.body);
    assert!(
        !r.body.contains(&world.server.state.display().to_string()),
        "{}",
        r.body
    );
    assert_eq!(read_latest(), latest);
    std::fs::remove_file(&cache).unwrap();
    let r = commit(&good);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(read_latest()["snapshotId"], good["snapshotId"]);
    let _ = free_port();
}

#[test]
fn on_an_s3_store_the_server_grants_pre_signed_uploads_and_the_desktop_holds_no_store_key() {
    let s3 = crate::support::S3::from_env();
    let bucket = s3.bucket("grants");
    let dir = tempdir();
    let store = format!("s3://{bucket}/published");
    let server =
        crate::server::Server::start_env(&dir.path().join("server"), &store, &[], &s3.env());
    let key = server.client("Lender");
    let (status, v, _) = server.call(
        "POST",
        Some(&key),
        "/companies",
        Some(json!({"name": "S3 Ltd", "redirectUrl": "https://app.example/x"})),
    );
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let link = v["linkUrl"].as_str().unwrap().to_owned();
    let to = http(
        "POST",
        &format!("{link}/start"),
        &[("content-type", "application/x-www-form-urlencoded")],
        Some("port=47815".into()),
    )
    .header("location")
    .unwrap();
    let linked = http(
        "POST",
        &format!("{}/connector/link", server.base),
        &[("content-type", "application/json")],
        Some(json!({"code": param(&to, "code"), "state": param(&to, "state"), "companyId": id, "deviceName": "t"}).to_string()),
    );
    assert_eq!(linked.status, 200, "{}", linked.body);
    let cred = linked.json()["credential"].as_str().unwrap().to_owned();
    // The grants are pre-signed URLs of the store, not the server's own upload route.
    let grants = http(
        "POST",
        &format!("{}/companies/{id}/connector/grants", server.base),
        &[("authorization", &format!("Bearer {cred}")), ("content-type", "application/json")],
        Some(json!({"snapshotId": "x", "files": [{"key": format!("{id}/data/invoices/{}.parquet", "a".repeat(64)), "sha256": "a".repeat(64), "bytes": 3}]}).to_string()),
    )
    .json();
    let url = grants["uploads"][0]["url"].as_str().unwrap();
    assert!(
        url.starts_with(&s3.endpoint) && url.contains("X-Amz-Signature"),
        "{grants}"
    );
    assert_eq!(grants["uploads"][0]["viaServer"], false);
    // A whole sync through those grants, with no AWS setting in the connector's environment.
    let sage = golden(&dir.path().join("sage"));
    let out = std::process::Command::new(crate::support::CONNECTOR)
        .args([
            "sync",
            "--odbc",
            &sage.odbc,
            "--company",
            &id,
            "--server",
            &server.base,
            "--credential-env",
            "TEST_DEVICE",
            "--state-dir",
        ])
        .arg(dir.path().join("connector"))
        .env("TEST_DEVICE", &cred)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_ENDPOINT")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let status = server.wait_live(&key, &id, None);
    assert_eq!(status["invoices"]["recordCount"], 7, "{status}");
}
