//! The whole linking flow as a Sage user meets it, in a real headless Chromium driven over
//! WebDriver: a stand-in API client page, our link page, the connector's loopback hand-over
//! and settings page, and back to the client page; then the API serves the company's data.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::desktop::World;
use crate::support::generated;
use crate::webdriver::{Browser, PageServer};

/// A stand-in API client: `/` shows a "Connect Sage" link to the company's link URL; `/done`
/// shows what the link flow sent back.
fn client_page(link: Arc<Mutex<String>>) -> PageServer {
    PageServer::start(move |_method, path, _body| {
        if let Some(query) = path.strip_prefix("/done?") {
            let mut html = String::from(
                "<!doctype html><title>Lender</title><h1 id=\"back\">Back at the lender</h1><dl>",
            );
            for kv in query.split('&') {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                html.push_str(&format!("<dt>{k}</dt><dd id=\"param-{k}\">{v}</dd>"));
            }
            html.push_str("</dl>");
            return (200, vec![("content-type".into(), "text/html".into())], html);
        }
        let url = link.lock().unwrap().clone();
        (
            200,
            vec![("content-type".into(), "text/html".into())],
            format!(
                "<!doctype html><title>Lender</title><h1>Your lender</h1><a id=\"connect-sage\" href=\"{url}\">Connect Sage 50</a>"
            ),
        )
    })
}

#[test]
fn a_sage_user_links_in_a_browser_from_the_client_page_back_to_it_with_data_served() {
    let world = World::new(&[]);
    let sage = generated(&world.dir.path().join("sage"), 11, 400);
    let agent = world.agent(&[&sage.dir]);
    let link = Arc::new(Mutex::new(String::new()));
    let page = client_page(link.clone());
    let (id, link_url) = world.company("Harbour Ltd", &format!("{}/done", page.base()));
    *link.lock().unwrap() = link_url;

    let browser = Browser::start();
    browser.goto(&page.base());
    browser.find("#connect-sage").click();
    browser.wait_for("#connect", Duration::from_secs(10));
    assert!(browser.find("#company-name").text().contains("Harbour Ltd"));
    browser.find("#connect").click();
    // The connector's settings page, on its loopback origin.
    browser.wait_for("#setup:not([hidden])", Duration::from_secs(20));
    assert!(browser.url().starts_with(&agent.base), "{}", browser.url());
    let option = format!("{}", sage.dir.join("ACCDATA").display());
    browser.find("#sage-company").select_by_value(&option);
    browser.find("#test").click();
    let name = browser
        .wait_for("#probe-name", Duration::from_secs(30))
        .text();
    let expected: String = sage
        .sqlite()
        .query_row("SELECT NAME FROM COMPANY", [], |r| r.get(0))
        .unwrap();
    assert_eq!(name, expected);
    // The driver of the Sage version whose COMPANY file lists it, and Sage's own version.
    assert!(
        browser
            .find("#probe-version")
            .text()
            .starts_with("Sage Line 50 v32 ("),
        "{}",
        browser.find("#probe-version").text()
    );
    browser.find("#confirm").click();
    // Sent back to the client page with the company id and a status.
    let back = browser.wait_for_url(|u| u.contains("/done?"), Duration::from_secs(90));
    assert!(back.starts_with(&page.base()), "{back}");
    assert_eq!(browser.find("#param-companyId").text(), id);
    assert_eq!(browser.find("#param-status").text(), "linked");
    // The API serves the company's data: the customers Sage has.
    world.server.wait_live(&world.key, &id, None);
    let customers = world
        .server
        .ok(&world.key, &format!("/companies/{id}/data/customers"));
    let in_sage: i64 = sage
        .sqlite()
        .query_row("SELECT count(*) FROM SALES_LEDGER", [], |r| r.get(0))
        .unwrap();
    assert_eq!(customers["totalResults"], in_sage, "{customers}");
}

#[test]
fn a_sage_user_whose_browser_is_elsewhere_types_the_connectors_code_on_the_link_page() {
    let world = World::new(&[]);
    let sage = generated(&world.dir.path().join("sage"), 12, 200);
    let agent = world.agent(&[&sage.dir]);
    let (id, link_url) = world.company("Remote Ltd", "https://app.example/done");
    let browser = Browser::start();
    // On the PC with Sage: the connector's settings page shows a code.
    let settings = std::fs::read_to_string(agent.state.join("agent").join("settings-url")).unwrap();
    browser.goto(settings.trim());
    browser
        .wait_for("#link-code", Duration::from_secs(10))
        .click();
    browser.wait_until("the code", Duration::from_secs(10), |b| {
        b.find("#user-code").text().contains('-')
    });
    let shown = browser.find("#user-code").text();
    let code = shown.rsplit(' ').next().unwrap().to_owned();
    // In the other browser: the link page, the code typed.
    let other = Browser::start();
    other.goto(&link_url);
    other.find("#user-code").send_keys(&code);
    other.find("#submit-code").click();
    other.wait_for("#linked", Duration::from_secs(10));
    // Back on the PC: the company appears, waiting for its Sage company.
    agent.wait_for(&id, "the linked company", Duration::from_secs(20), |c| {
        c["state"] == "needs_setup"
    });
    browser.goto(&format!("{}/settings?company={id}", agent.base));
    browser.wait_for("#setup:not([hidden])", Duration::from_secs(10));
    browser
        .find("#sage-company")
        .select_by_value(&sage.dir.join("ACCDATA").display().to_string());
    browser.find("#test").click();
    browser.wait_for("#probe-name", Duration::from_secs(30));
    browser.find("#confirm").click();
    browser.wait_for("#done", Duration::from_secs(90));
    world.server.wait_live(&world.key, &id, None);
}
