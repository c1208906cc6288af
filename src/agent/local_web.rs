//! The agent's loopback listener: the link hand-over and the settings page.
//!
//! Takes requests on `127.0.0.1:PORT` only; produces linked companies and their settings.
//! What it guarantees against other sites and other machines:
//! - it binds 127.0.0.1, and refuses any request whose `Host` is not `127.0.0.1:PORT` or
//!   `localhost:PORT` (a DNS-rebinding page reaches the port under its own name);
//! - `GET /link?code&state&company` redeems the one-time code at the configured server (the
//!   URL cannot name another server), then opens a settings session;
//! - the settings session is a random cookie (`HttpOnly`, `SameSite=Strict` after the first
//!   hop); every state-changing request is a POST that must carry the session's token in
//!   `X-Connector-Token` and an `Origin` of this listener, so another site cannot change
//!   settings or start a sync;
//! - no CORS headers, `X-Frame-Options: DENY`, a strict content security policy, and nothing
//!   else on the port.

use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::config::{self, Setup};
use super::discovery;
use super::{Agent, Session, device_name};
use crate::protocol::RedeemRequest;
use crate::server::link::escape;

const SESSION_COOKIE: &str = "connector_session";
const TOKEN_HEADER: &str = "x-connector-token";
/// Header carrying the agent's ticket on the tray's requests.
pub const TICKET_HEADER: &str = "x-connector-ticket";

/// The listener's routes.
pub fn router(agent: Arc<Agent>) -> Router {
    let posts = Router::new()
        .route("/settings/test", post(test))
        .route("/settings/confirm", post(confirm))
        .route("/settings/sync-now", post(sync_now))
        .route("/settings/pause", post(pause))
        .route("/settings/quiet", post(quiet))
        .route("/settings/link-code", post(link_code))
        .route("/settings/doctor", post(doctor))
        .route("/settings/moved", post(moved))
        .route("/settings/start-at-logon", post(start_at_logon))
        .route_layer(axum::middleware::from_fn_with_state(
            agent.clone(),
            require_session,
        ));
    // The tray's menu: the ticket of `settings-url` (a file only this user can read) in a
    // header no page can send without a CORS preflight this listener never answers.
    let control = Router::new()
        .route("/control/sync-now", post(control_sync_now))
        .route("/control/pause", post(control_pause))
        .route_layer(axum::middleware::from_fn_with_state(
            agent.clone(),
            require_ticket,
        ));
    Router::new()
        .route("/link", get(link))
        .route("/open", get(open))
        .route("/settings", get(settings_page))
        .route("/settings/state.json", get(state_json))
        // `connector doctor` asks whether the agent runs: nothing but this word answers
        .route("/alive", get(|| async { "sage-connector\n" }))
        .merge(posts)
        .merge(control)
        .layer(axum::middleware::from_fn_with_state(agent.clone(), guard))
        .with_state(agent)
}

/// The origins this listener answers as.
fn own_hosts(agent: &Agent) -> [String; 2] {
    let port = *agent.port.lock().unwrap_or_else(|e| e.into_inner());
    [format!("127.0.0.1:{port}"), format!("localhost:{port}")]
}

/// A request header's text ("" when absent or not text).
fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"error": message, "status": status.as_u16()})),
    )
        .into_response()
}

/// Host allow-list and security headers, on every request.
async fn guard(State(agent): State<Arc<Agent>>, request: Request, next: Next) -> Response {
    let host = header_text(request.headers(), header::HOST.as_str());
    if !own_hosts(&agent).iter().any(|h| h == host) {
        tracing::warn!(
            host,
            "Refused a loopback request for another host name (DNS rebinding?)."
        );
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            "this listener only answers as 127.0.0.1 or localhost",
        );
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn session_of(agent: &Agent, headers: &HeaderMap) -> Option<(String, Session)> {
    let cookies = headers.get(header::COOKIE)?.to_str().ok()?;
    let id = cookies
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_owned())?;
    let session = agent
        .sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&id)
        .cloned()?;
    Some((id, session))
}

/// The tray's requests: the agent's ticket, and no `Origin` (no web page sends them).
async fn require_ticket(
    State(agent): State<Arc<Agent>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let ticket = header_text(&headers, TICKET_HEADER);
    if headers.contains_key(header::ORIGIN)
        || !crate::server::control::constant_time_eq(ticket.as_bytes(), agent.ticket.as_bytes())
    {
        return refuse(
            StatusCode::FORBIDDEN,
            "only the connector's tray may do this",
        );
    }
    next.run(request).await
}

/// POSTs: a session, its token, and this listener's Origin.
async fn require_session(
    State(agent): State<Arc<Agent>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let origin = header_text(&headers, header::ORIGIN.as_str());
    let own = own_hosts(&agent);
    if !own.iter().any(|h| origin == format!("http://{h}")) {
        tracing::warn!(origin, "Refused a settings change from another origin.");
        return refuse(
            StatusCode::FORBIDDEN,
            "settings can only be changed from the connector's own settings page",
        );
    }
    let Some((_, session)) = session_of(&agent, &headers) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "no settings session: open the settings from the connector",
        );
    };
    let token = header_text(&headers, TOKEN_HEADER);
    if !crate::server::control::constant_time_eq(token.as_bytes(), session.csrf.as_bytes()) {
        return refuse(
            StatusCode::FORBIDDEN,
            "the request does not carry this session's token",
        );
    }
    next.run(request).await
}

/// A new session: its cookie, and a redirect to the settings page.
fn new_session(agent: &Agent, to: &str) -> Response {
    let id = crate::server::control::random_token(24);
    agent
        .sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            id.clone(),
            Session {
                csrf: crate::server::control::random_token(24),
            },
        );
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, to.to_owned()),
            // Lax: the cookie must come along on this first, cross-site-started navigation.
            (
                header::SET_COOKIE,
                format!("{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax"),
            ),
        ],
    )
        .into_response()
}

fn message_page(status: StatusCode, title: &str, text: &str) -> Response {
    (
        status,
        Html(format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
             <style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem}}</style></head>\
             <body><h1>{t}</h1><p id=\"message\">{m}</p></body></html>",
            t = escape(title),
            m = escape(text)
        )),
    )
        .into_response()
}

#[derive(Deserialize)]
struct LinkParams {
    code: Option<String>,
    state: Option<String>,
    company: Option<String>,
}

/// `GET /link`: the link page's hand-over.
async fn link(State(agent): State<Arc<Agent>>, Query(p): Query<LinkParams>) -> Response {
    let (Some(code), Some(state), Some(company)) = (p.code, p.state, p.company) else {
        return message_page(
            StatusCode::BAD_REQUEST,
            "Not a link",
            "This address needs the code the link page gives: start again from the app.",
        );
    };
    if !crate::state::valid_company_id(&company) {
        return message_page(
            StatusCode::BAD_REQUEST,
            "Not a link",
            "The company in this address is not valid.",
        );
    }
    let request = RedeemRequest {
        code,
        state,
        company_id: company.clone(),
        device_name: device_name(),
    };
    match agent.server.redeem(&request).await {
        Ok(linked) => {
            if let Err(e) = agent.add_linked(&linked) {
                return message_page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Could not save the link",
                    &format!("The connector could not store its credential: {e}"),
                );
            }
            new_session(&agent, &format!("/settings?company={}", linked.company_id))
        }
        Err(e) => {
            tracing::warn!(company = %company, error = %e, "The server refused a link code.");
            message_page(
                StatusCode::BAD_REQUEST,
                "Linking failed",
                &format!("{e}. Go back to the app and start connecting again."),
            )
        }
    }
}

#[derive(Deserialize)]
struct OpenParams {
    ticket: Option<String>,
}

/// `GET /open?ticket=`: opens a settings session (the tray and `connector settings`).
async fn open(State(agent): State<Arc<Agent>>, Query(p): Query<OpenParams>) -> Response {
    let ok = p.ticket.as_deref().is_some_and(|t| {
        crate::server::control::constant_time_eq(t.as_bytes(), agent.ticket.as_bytes())
    });
    if !ok {
        return message_page(
            StatusCode::FORBIDDEN,
            "Open the settings from the connector",
            "Use the connector's tray icon, or run `connector settings`.",
        );
    }
    new_session(&agent, "/settings")
}

/// The Sage companies found on this PC, for the drop-down.
fn discovered(agent: &Agent) -> Vec<discovery::FoundCompany> {
    discovery::find_companies(&agent.options.sage_root)
}

/// `GET /settings/state.json`: the status and the Sage companies found.
async fn state_json(State(agent): State<Arc<Agent>>, headers: HeaderMap) -> Response {
    if session_of(&agent, &headers).is_none() {
        return refuse(StatusCode::UNAUTHORIZED, "no settings session");
    }
    let status = agent.status();
    Json(json!({
        "status": status,
        "sageCompanies": discovered(&agent),
        "pendingCode": agent.running().get("_device_code").and_then(|r| r.requested.clone()),
    }))
    .into_response()
}

/// `GET /settings`: the page.
async fn settings_page(State(agent): State<Arc<Agent>>, headers: HeaderMap) -> Response {
    let Some((_, session)) = session_of(&agent, &headers) else {
        return message_page(
            StatusCode::UNAUTHORIZED,
            "Open the settings from the connector",
            "Use the connector's tray icon, or run `connector settings`.",
        );
    };
    Html(SETTINGS_HTML.replace("{{TOKEN}}", &session.csrf)).into_response()
}

/// The form of Test and Confirm.
#[derive(Deserialize)]
struct SourceForm {
    company: String,
    /// The company folder or its ACCDATA folder, from the drop-down or typed.
    path: String,
    user: Option<String>,
    password: Option<String>,
}

/// The connection string and the folder a form names.
fn source_of(
    agent: &Agent,
    form: &SourceForm,
) -> Result<(String, discovery::FoundCompany), String> {
    let typed = form.path.trim();
    if typed.is_empty() {
        return Err("choose a Sage company, or type its data folder".into());
    }
    let found = discovered(agent);
    let wanted = std::path::PathBuf::from(typed);
    let known = found
        .iter()
        .find(|f| f.accdata == wanted || f.data_dir == wanted)
        .cloned();
    let company = match known {
        Some(f) => f,
        None => {
            let is_accdata = wanted
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.eq_ignore_ascii_case("ACCDATA"));
            let (data_dir, accdata) = if is_accdata {
                (
                    wanted.parent().map(|p| p.to_owned()).unwrap_or_default(),
                    wanted.clone(),
                )
            } else {
                (wanted.clone(), wanted.join("ACCDATA"))
            };
            discovery::FoundCompany {
                version: found.iter().map(|f| f.version).max().unwrap_or(32),
                listed_in: std::path::PathBuf::new(),
                exists: accdata.is_dir(),
                network: false,
                data_dir,
                accdata,
            }
        }
    };
    Ok((
        discovery::connection_string(&agent.options.odbc_template, &company),
        company,
    ))
}

/// Runs `connector probe` in a child process (ODBC never runs in the agent).
async fn run_probe(agent: &Agent, odbc: &str, form: &SourceForm) -> Value {
    let mut cmd = super::child_command(&agent.options.exe);
    cmd.args(["probe", "--odbc", odbc])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(user) = form.user.as_deref().filter(|u| !u.trim().is_empty()) {
        cmd.args(["--user", user.trim()]);
    }
    if let Some(password) = form.password.as_deref().filter(|p| !p.is_empty()) {
        cmd.args(["--password-env", super::PASSWORD_ENV]);
        cmd.env(super::PASSWORD_ENV, password);
    }
    let output = match tokio::time::timeout(std::time::Duration::from_secs(120), cmd.output()).await
    {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => return json!({"ok": false, "reason": "crashed", "message": e.to_string()}),
        Err(_) => {
            return json!({"ok": false, "reason": "company_locked",
                "message": "Sage did not answer within two minutes: is the company locked or on a slow network share?"});
        }
    };
    serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
        json!({"ok": false, "reason": "crashed",
               "message": format!("the test stopped unexpectedly ({})", output.status)})
    })
}

fn company_known(agent: &Agent, company: &str) -> bool {
    agent
        .config()
        .companies
        .iter()
        .any(|c| c.id == company && !c.revoked)
}

/// `POST /settings/test`: connects and shows what Sage says.
async fn test(State(agent): State<Arc<Agent>>, Json(form): Json<SourceForm>) -> Response {
    if !company_known(&agent, &form.company) {
        return refuse(StatusCode::NOT_FOUND, "no such linked company");
    }
    let (odbc, found) = match source_of(&agent, &form) {
        Ok(x) => x,
        Err(e) => {
            return Json(json!({"ok": false, "reason": "data_folder_not_found", "message": e}))
                .into_response();
        }
    };
    let mut answer = run_probe(&agent, &odbc, &form).await;
    if let Some(obj) = answer.as_object_mut() {
        obj.insert(
            "sageVersion".into(),
            json!(discovery::driver_name(found.version)),
        );
        obj.insert(
            "dataPath".into(),
            json!(found.accdata.display().to_string()),
        );
    }
    Json(answer).into_response()
}

/// `POST /settings/confirm`: tests again, saves, and starts the first sync.
async fn confirm(State(agent): State<Arc<Agent>>, Json(form): Json<SourceForm>) -> Response {
    if !company_known(&agent, &form.company) {
        return refuse(StatusCode::NOT_FOUND, "no such linked company");
    }
    let (odbc, found) = match source_of(&agent, &form) {
        Ok(x) => x,
        Err(e) => {
            return Json(json!({"ok": false, "reason": "data_folder_not_found", "message": e}))
                .into_response();
        }
    };
    let answer = run_probe(&agent, &odbc, &form).await;
    if answer["ok"] != json!(true) {
        return Json(answer).into_response();
    }
    let secret = config::sage_secret(&form.company);
    let stored = match form.password.as_deref().filter(|p| !p.is_empty()) {
        Some(p) => agent.secrets.set(&secret, p),
        None => agent.secrets.delete(&secret),
    };
    if let Err(e) = stored {
        return Json(json!({"ok": false, "reason": "local_storage", "message": e.to_string()}))
            .into_response();
    }
    let setup = Setup {
        accdata: found.accdata.display().to_string(),
        version: Some(found.version),
        odbc,
        user: form
            .user
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned),
        sage_company_id: answer["probe"]["companyId"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        sage_company_name: answer["probe"]["companyName"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    };
    tracing::info!(company = %form.company, sage_company = %setup.sage_company_name, data_path = %setup.accdata, "Saved the Sage company; starting the first sync.");
    agent.update(&form.company, |c| {
        c.setup = Some(setup);
        c.last_error = None;
        c.last_message = None;
        c.last_failure = None;
        c.failures_in_a_row = 0;
        // chosen by hand: whatever move was found or declined no longer applies
        c.moved_to = None;
        c.problems.clear();
        c.declined_moves.clear();
    });
    agent.request_sync(&form.company, "local");
    Json(json!({"ok": true})).into_response()
}

#[derive(Deserialize)]
struct CompanyForm {
    company: String,
    hours: Option<f64>,
    quiet: Option<Vec<String>>,
}

/// `POST /settings/sync-now`.
async fn sync_now(State(agent): State<Arc<Agent>>, Json(form): Json<CompanyForm>) -> Response {
    if !company_known(&agent, &form.company) {
        return refuse(StatusCode::NOT_FOUND, "no such linked company");
    }
    tracing::info!(company = %form.company, "Sync now was asked for on this PC.");
    agent.request_sync(&form.company, "local");
    Json(json!({"ok": true})).into_response()
}

/// Until when a pause of `hours` (24 by default, 0 resumes) holds.
fn pause_until(hours: Option<f64>) -> Option<String> {
    let hours = hours.unwrap_or(24.0).clamp(0.0, 24.0 * 365.0);
    (hours > 0.0).then(|| {
        (chrono::Utc::now() + chrono::Duration::seconds((hours * 3600.0) as i64))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    })
}

/// `POST /settings/pause`: `hours` > 0 pauses, 0 resumes.
async fn pause(State(agent): State<Arc<Agent>>, Json(form): Json<CompanyForm>) -> Response {
    if !company_known(&agent, &form.company) {
        return refuse(StatusCode::NOT_FOUND, "no such linked company");
    }
    let until = pause_until(form.hours);
    tracing::info!(company = %form.company, until = ?until, "Syncing paused or resumed on this PC.");
    agent.update(&form.company, |c| c.paused_until = until.clone());
    agent.wake.notify_one();
    Json(json!({"ok": true, "pausedUntil": until})).into_response()
}

/// `POST /settings/quiet`: the quiet hours (`["09:00-17:00"]`).
async fn quiet(State(agent): State<Arc<Agent>>, Json(form): Json<CompanyForm>) -> Response {
    if !company_known(&agent, &form.company) {
        return refuse(StatusCode::NOT_FOUND, "no such linked company");
    }
    let quiet = form.quiet.unwrap_or_default();
    for q in &quiet {
        if let Err(e) = q.parse::<super::schedule::QuietHours>() {
            return refuse(StatusCode::BAD_REQUEST, &format!("quiet hours {q:?}: {e}"));
        }
    }
    agent.update(&form.company, |c| c.quiet = quiet.clone());
    agent.wake.notify_one();
    Json(json!({"ok": true})).into_response()
}

/// What the tray asks for: a company, or every company.
#[derive(Deserialize)]
struct ControlForm {
    company: Option<String>,
    hours: Option<f64>,
}

fn companies_for(agent: &Agent, company: Option<&str>) -> Vec<String> {
    agent
        .config()
        .companies
        .iter()
        .filter(|c| !c.revoked && company.is_none_or(|id| id == c.id))
        .map(|c| c.id.clone())
        .collect()
}

/// `POST /control/sync-now` (the tray): one company, or all.
async fn control_sync_now(
    State(agent): State<Arc<Agent>>,
    Json(form): Json<ControlForm>,
) -> Response {
    let ids = companies_for(&agent, form.company.as_deref());
    for id in &ids {
        agent.request_sync(id, "local");
    }
    tracing::info!(companies = ids.len(), "Sync now was asked for in the tray.");
    Json(json!({"ok": true, "companies": ids})).into_response()
}

/// `POST /control/pause` (the tray): every company, `hours` > 0 pauses, 0 resumes.
async fn control_pause(State(agent): State<Arc<Agent>>, Json(form): Json<ControlForm>) -> Response {
    let until = pause_until(form.hours);
    for id in companies_for(&agent, form.company.as_deref()) {
        agent.update(&id, |c| c.paused_until = until.clone());
    }
    agent.wake.notify_one();
    tracing::info!(until = ?until, "Syncing paused or resumed in the tray.");
    Json(json!({"ok": true, "pausedUntil": until})).into_response()
}

/// `POST /settings/doctor`: runs `connector doctor` (a child process) and returns its report;
/// what it finds goes to the server at the next check-in.
async fn doctor(State(agent): State<Arc<Agent>>) -> Response {
    tracing::info!("The connector's checks were asked for on the settings page.");
    match agent.diagnose(None).await {
        Ok(report) => Json(report).into_response(),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
}

/// The answer about a moved company.
#[derive(Deserialize)]
struct MovedForm {
    company: String,
    accept: bool,
}

/// `POST /settings/moved`: `accept` takes the folder where the same company was found.
async fn moved(State(agent): State<Arc<Agent>>, Json(form): Json<MovedForm>) -> Response {
    if !company_known(&agent, &form.company) {
        return refuse(StatusCode::NOT_FOUND, "no such linked company");
    }
    match agent.confirm_moved(&form.company, form.accept) {
        Ok(folder) => Json(json!({"ok": true, "dataFolder": folder})).into_response(),
        Err(e) => refuse(StatusCode::CONFLICT, &e),
    }
}

/// The answer to "start at logon?".
#[derive(Deserialize)]
struct OnForm {
    on: bool,
}

/// `POST /settings/start-at-logon`.
async fn start_at_logon(State(agent): State<Arc<Agent>>, Json(form): Json<OnForm>) -> Response {
    match agent.set_start_at_logon(form.on) {
        Ok(()) => Json(json!({"ok": true, "startAtLogon": form.on})).into_response(),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
}

/// `POST /settings/link-code`: the device-code flow, for a browser on another machine.
async fn link_code(State(agent): State<Arc<Agent>>) -> Response {
    let code = match agent.server.device_code(&device_name()).await {
        Ok(c) => c,
        Err(e) => return refuse(StatusCode::BAD_GATEWAY, &e.to_string()),
    };
    agent
        .running()
        .entry("_device_code".into())
        .or_default()
        .requested = Some(code.user_code.clone());
    let poller = agent.clone();
    let device_code = code.device_code.clone();
    let interval = std::time::Duration::from_secs(code.interval.max(1));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(code.expires_in);
    tokio::spawn(async move {
        while std::time::Instant::now() < deadline {
            tokio::time::sleep(interval).await;
            match poller.server.device_token(&device_code).await {
                Ok(Some(linked)) => {
                    if let Err(e) = poller.add_linked(&linked) {
                        tracing::error!(error = %e, "Could not store the linked company.");
                    }
                    break;
                }
                Ok(None) => {}
                Err(super::checkin::CallError::Unreachable { .. }) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "The device code was not accepted.");
                    break;
                }
            }
        }
        poller.running().remove("_device_code");
    });
    Json(json!({"userCode": code.user_code, "expiresIn": code.expires_in})).into_response()
}

const SETTINGS_HTML: &str = r#"<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>Sage Connector</title>
<style>
body{font-family:system-ui,sans-serif;max-width:46rem;margin:1.5rem auto;padding:0 1rem;color:#1d2330;line-height:1.45}
.card{border:1px solid #d5d9e0;border-radius:8px;padding:1rem 1.2rem;margin:1rem 0}
.state{font-weight:600} .muted{color:#5b6473;font-size:.9rem} .error{color:#a40000} .ok{color:#116b2e}
label{display:block;margin:.6rem 0 .2rem} input,select{font-size:1rem;padding:.35rem;width:100%;box-sizing:border-box}
button{font-size:1rem;padding:.45rem 1rem;margin:.6rem .4rem 0 0;border-radius:6px;border:1px solid #0b5cff;background:#0b5cff;color:#fff;cursor:pointer}
button.secondary{background:#fff;color:#0b5cff} button:disabled{opacity:.5;cursor:default}
dl{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem} dt{color:#5b6473}
</style></head><body>
<h1>Sage Connector</h1>
<div class="card" id="logon-question" hidden><h2>Start the connector when you log on?</h2>
<p class="muted">Your data stays up to date only while the connector runs.</p>
<button id="logon-yes" type="button">Yes, start at logon</button>
<button id="logon-no" class="secondary" type="button">No</button></div>
<div id="companies"></div>
<div class="card"><h2>Data not updating?</h2>
<p class="muted">Checks the connector, the server, each Sage company and this PC, and says what to do.</p>
<button id="run-checks" class="secondary" type="button">Run the checks</button>
<label><input id="logon-setting" type="checkbox" style="width:auto"> Start the connector when I log on</label>
<ol id="checks" aria-live="polite"></ol></div>
<div class="card" id="setup" hidden>
  <h2>Choose your Sage company for <span id="setup-name"></span></h2>
  <label for="sage-company">Sage company on this PC</label>
  <select id="sage-company"></select>
  <label for="data-path">…or its data folder (in Sage: Help &gt; About &gt; Data Directory)</label>
  <input id="data-path" autocomplete="off" placeholder="C:\ProgramData\Sage\Accounts\2026\Company.000">
  <label for="sage-user">Sage user name</label>
  <input id="sage-user" autocomplete="off" value="MANAGER">
  <label for="sage-password">Sage password (leave empty if there is none)</label>
  <input id="sage-password" type="password" autocomplete="off">
  <button id="test" type="button">Test</button>
  <button id="confirm" type="button" disabled>Confirm</button>
  <div id="test-result" aria-live="polite"></div>
  <div id="progress" aria-live="polite"></div>
</div>
<div class="card"><h2>Sage on another computer than your browser?</h2>
<p class="muted">Get a code here and type it on the link page in your browser.</p>
<button id="link-code" class="secondary" type="button">Link with a code</button>
<p id="user-code" class="state"></p></div>
<script>
const TOKEN = "{{TOKEN}}";
const params = new URLSearchParams(location.search);
let setupFor = params.get("company");
let confirmed = false;
const $ = (id) => document.getElementById(id);
function esc(s){ const d=document.createElement("div"); d.textContent = s==null ? "" : String(s); return d.innerHTML; }
async function post(path, body){
  const r = await fetch(path, {method:"POST", headers:{"Content-Type":"application/json","X-Connector-Token":TOKEN}, body: JSON.stringify(body||{})});
  return r.json();
}
function source(){
  return {company: setupFor, path: $("data-path").value.trim() || $("sage-company").value,
          user: $("sage-user").value, password: $("sage-password").value};
}
const STATES = {needs_setup:"Needs the Sage company", ready:"Ready", syncing:"Syncing…", up_to_date:"Up to date",
                failing:"Needs attention", paused:"Paused", revoked:"Disconnected", moved:"Your Sage data moved"};
async function refresh(){
  const r = await fetch("/settings/state.json"); if(!r.ok) return;
  const s = await r.json();
  const list = s.status.companies.map(c => `<div class="card company" id="company-${esc(c.id)}" data-state="${esc(c.state)}">
    <h2>${esc(c.name)}</h2><p class="state" id="state-${esc(c.id)}">${esc(STATES[c.state]||c.state)}</p>
    <dl><dt>Sage company</dt><dd>${esc(c.sageCompany||"—")}</dd><dt>Last sync</dt><dd>${esc(c.lastSuccess||"never")}</dd>
    <dt>Next sync</dt><dd>${esc(c.nextSyncAt||"—")} ${c.waitingBecause?"("+esc(c.waitingBecause)+")":""}</dd></dl>
    ${c.movedTo?`<p class="error" id="moved-${esc(c.id)}">We found ${esc(c.sageCompany)} in another folder: <b>${esc(c.movedTo)}</b> (it was in ${esc(c.dataFolder)}). Is this where your Sage data is now?</p>
      <button data-act="moved-yes" data-id="${esc(c.id)}">Yes, use this folder</button>
      <button class="secondary" data-act="moved-no" data-id="${esc(c.id)}">No</button>`:""}
    ${c.advice&&!c.movedTo?`<p class="error">${esc(c.advice)}</p><p class="muted">${esc(c.lastMessage||"")}</p>`:""}
    <button class="secondary" data-act="setup" data-id="${esc(c.id)}">Sage company…</button>
    <button class="secondary" data-act="sync" data-id="${esc(c.id)}">Sync now</button>
    <button class="secondary" data-act="${c.state==="paused"?"resume":"pause"}" data-id="${esc(c.id)}">${c.state==="paused"?"Resume":"Pause for 24 hours"}</button></div>`).join("");
  $("companies").innerHTML = list || "<p>No company is linked yet: start from your app's link page.</p>";
  const sel = $("sage-company");
  if(sel.options.length === 0){
    sel.innerHTML = s.sageCompanies.map(f => `<option value="${esc(f.accdata)}">${esc(f.dataDir)} — Sage 50 v${esc(f.version)}${f.exists?"":" (not found)"}</option>`).join("")
      || `<option value="">No Sage company found on this PC: type its folder below</option>`;
  }
  $("logon-question").hidden = s.status.startAtLogon !== null && s.status.startAtLogon !== undefined;
  $("logon-setting").checked = s.status.startAtLogon === true;
  if(s.pendingCode){ $("user-code").textContent = "Type this code on the link page: " + s.pendingCode; }
  const mine = s.status.companies.find(c => c.id === setupFor);
  if(setupFor && mine && (mine.state === "needs_setup" || !$("setup").hidden)){
    $("setup").hidden = false; $("setup-name").textContent = mine.name;
  }
  if(confirmed && mine){
    if(mine.state === "up_to_date"){
      $("progress").innerHTML = `<p class="ok" id="done">Your Sage data was sent. ${mine.returnUrl?"Taking you back to the app…":""}</p>`;
      if(mine.returnUrl){ confirmed = false; setTimeout(() => { location.href = mine.returnUrl; }, 800); }
    } else if(mine.state === "failing"){
      $("progress").innerHTML = `<p class="error" id="failed">${esc(mine.advice)}</p><p class="muted">${esc(mine.lastMessage||"")}</p>`;
    } else {
      $("progress").innerHTML = `<p id="syncing">Reading your Sage data and sending it… (${esc(STATES[mine.state]||mine.state)})</p>`;
    }
  }
}
document.addEventListener("click", async (e) => {
  const b = e.target.closest("button[data-act]"); if(!b) return;
  const id = b.dataset.id;
  if(b.dataset.act === "setup"){ setupFor = id; $("setup").hidden = false; }
  if(b.dataset.act === "sync"){ await post("/settings/sync-now", {company:id}); }
  if(b.dataset.act === "pause"){ await post("/settings/pause", {company:id, hours:24}); }
  if(b.dataset.act === "resume"){ await post("/settings/pause", {company:id, hours:0}); }
  if(b.dataset.act === "moved-yes"){ await post("/settings/moved", {company:id, accept:true}); }
  if(b.dataset.act === "moved-no"){ await post("/settings/moved", {company:id, accept:false}); }
  refresh();
});
$("test").addEventListener("click", async () => {
  $("confirm").disabled = true; $("test-result").innerHTML = "<p>Connecting to Sage…</p>";
  const r = await post("/settings/test", source());
  if(r.ok){
    const p = r.probe;
    $("test-result").innerHTML = `<dl id="test-ok"><dt>Company</dt><dd id="probe-name">${esc(p.companyName)}</dd>
      <dt>Last transaction</dt><dd id="probe-last">${esc(p.lastTransactionDate||"none")}</dd>
      <dt>Sage version</dt><dd id="probe-version">${esc(r.sageVersion)}${p.programVersion?" ("+esc(p.programVersion)+")":""}</dd>
      <dt>Data folder</dt><dd id="probe-path">${esc(r.dataPath)}</dd></dl>`;
    $("confirm").disabled = false;
  } else {
    $("test-result").innerHTML = `<p class="error" id="test-error" data-reason="${esc(r.reason)}">${esc(r.message)}</p>`;
  }
});
$("confirm").addEventListener("click", async () => {
  $("confirm").disabled = true;
  const r = await post("/settings/confirm", source());
  if(r.ok){ confirmed = true; $("progress").innerHTML = "<p id=\"syncing\">Starting the first sync…</p>"; }
  else { $("test-result").innerHTML = `<p class="error" id="test-error" data-reason="${esc(r.reason)}">${esc(r.message)}</p>`; }
  refresh();
});
async function logon(on){ await post("/settings/start-at-logon", {on}); refresh(); }
$("logon-yes").addEventListener("click", () => logon(true));
$("logon-no").addEventListener("click", () => logon(false));
$("logon-setting").addEventListener("change", (e) => logon(e.target.checked));
$("run-checks").addEventListener("click", async () => {
  $("checks").innerHTML = "<li>Checking…</li>";
  const r = await post("/settings/doctor", {});
  $("checks").innerHTML = (r.findings||[]).map(f => `<li class="check" data-check="${esc(f.check)}" data-outcome="${esc(f.outcome)}" data-reason="${esc(f.reason||"")}">
    <span class="${f.outcome==="problem"?"error":f.outcome==="ok"?"ok":""}">${esc(f.outcome==="ok"?"OK":f.outcome==="problem"?"Problem":f.outcome==="warning"?"Warning":"Skipped")}</span>
    ${esc(f.found)}${f.advice?`<br><span class="muted">${esc(f.advice)}</span>`:""}</li>`).join("") || `<li class="error">${esc(r.error||"the checks failed")}</li>`;
  refresh();
});
$("link-code").addEventListener("click", async () => {
  const r = await post("/settings/link-code", {});
  $("user-code").textContent = r.userCode ? "Type this code on the link page: " + r.userCode : (r.error || "failed");
});
refresh(); setInterval(refresh, 500);
</script></body></html>"#;
