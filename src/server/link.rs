//! Linking: the hosted link page an API client sends its customer to, and the exchanges that
//! turn a link into a device credential for the connector on the customer's PC.
//!
//! Takes a link token (`lk_…`, made with the company: single use, expires after
//! [`super::api::AppState::link_ttl_secs`]); produces a device credential bound to the link's
//! company, in one of two ways:
//! - **Loopback** (RFC 8252 style): the page's button is a form POST to
//!   `/link/{token}/start`, answered by a 303 to `http://127.0.0.1:PORT/link?code&state&company`
//!   (a top-level navigation, not a `fetch`: browsers put page→loopback requests behind a
//!   permission prompt). The connector redeems the code at [`REDEEM_PATH`] with its `state`
//!   and company. A code is single use, 256 random bits, lives [`CODE_TTL_SECS`], and is burnt
//!   by a wrong `state` or company.
//! - **Device code** (RFC 8628 style), when the browser is on another machine: the connector
//!   gets a user code from [`DEVICE_CODE_PATH`] and shows it; the user types it on the link
//!   page; the connector's poll of [`DEVICE_TOKEN_PATH`] then gets the credential.
//!
//! Either way the link is used up when a connector is linked with it. The page is plain HTML
//! with no script; everything on it escapes what it shows.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::{Form, Json};
use serde::Deserialize;
use serde_json::json;

use super::api::AppState;
use super::control::{DevicePoll, LinkState, blocking};
use crate::protocol::{
    DEFAULT_LOOPBACK_PORT, DEVICE_CODE_PATH, DEVICE_TOKEN_PATH, DeviceCode, DeviceCodeRequest,
    DeviceTokenRequest, Linked, REDEEM_PATH, RedeemRequest, Refusal,
};

/// Seconds a loopback code lives.
pub const CODE_TTL_SECS: i64 = 300;
/// Seconds a device code lives.
pub const DEVICE_CODE_TTL_SECS: i64 = 900;

/// Escapes text for HTML.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A page in the house style.
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><style>\
         body{{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;color:#1d2330;line-height:1.5}}\
         h1{{font-size:1.5rem}} ol li{{margin:.4rem 0}} .box{{border:1px solid #d5d9e0;border-radius:8px;padding:1rem 1.2rem;margin:1.2rem 0}}\
         button{{font-size:1rem;padding:.6rem 1.2rem;border-radius:6px;border:0;background:#0b5cff;color:#fff;cursor:pointer}}\
         input{{font-size:1rem;padding:.4rem;text-transform:uppercase;letter-spacing:.1em}} .muted{{color:#5b6473;font-size:.9rem}}\
         .error{{color:#a40000}}</style></head><body>{body}</body></html>",
        title = escape(title)
    );
    let mut response = (status, Html(html)).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' http://127.0.0.1:* http://localhost:*; frame-ancestors 'none'",
        ),
    ] {
        headers.insert(name, header::HeaderValue::from_static(value));
    }
    response
}

fn unusable(state: LinkState) -> Response {
    let (status, why) = match state {
        LinkState::Used => (
            StatusCode::GONE,
            "This link was used already: a connector is linked with it.",
        ),
        LinkState::Expired => (StatusCode::GONE, "This link has expired."),
        LinkState::Usable => (StatusCode::OK, ""),
    };
    page(
        status,
        "Link not usable",
        &format!(
            "<h1>This link cannot be used</h1><p class=\"error\" id=\"error\">{why}</p>\
             <p>Go back to the app that sent you here and start connecting again: it gives you a new link.</p>"
        ),
    )
}

fn not_found() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "Link not found",
        "<h1>This link is not valid</h1><p class=\"error\" id=\"error\">Check that you opened the whole link the app gave you.</p>",
    )
}

/// `GET /link/{token}`: what happens next, the install steps, and the button.
pub async fn link_page(State(state): State<Arc<AppState>>, Path(token): Path<String>) -> Response {
    let control = state.control.clone();
    let looked = token.clone();
    let (company, link_state) = match blocking(move || control.link(&looked)).await {
        Ok(Some(found)) => found,
        Ok(None) => return not_found(),
        Err(e) => return internal(e),
    };
    if link_state != LinkState::Usable {
        return unusable(link_state);
    }
    let token = escape(&token);
    let name = escape(&company.name);
    let port = state.loopback_port;
    let download = escape(&state.download_url);
    page(
        StatusCode::OK,
        &format!("Connect {} to your Sage 50 data", company.name),
        &format!(
            "<h1>Connect <span id=\"company-name\">{name}</span> to your Sage 50 data</h1>\
             <p>The Sage Connector is a small program for the PC where Sage 50 Accounts is installed. \
             It reads your Sage data once a day and sends it securely, so that your app stays up to date. \
             It never changes anything in Sage.</p>\
             <div class=\"box\"><ol>\
             <li><a id=\"download\" href=\"{download}\">Download the Sage Connector</a> and install it on the PC with Sage 50 \
             (if it is installed already, skip this step).</li>\
             <li>Start it: its icon appears next to the clock.</li>\
             <li>Click the button below. Your browser opens the connector's settings, where you choose your Sage company.</li>\
             </ol>\
             <form method=\"post\" action=\"/link/{token}/start\">\
             <input type=\"hidden\" name=\"port\" value=\"{port}\">\
             <button id=\"connect\" type=\"submit\">Connect my Sage data</button></form>\
             <p class=\"muted\">If your browser then says it cannot reach 127.0.0.1, the connector is not running on this PC: \
             start <b>Sage Connector</b> from the Start menu and click the button again.</p></div>\
             <div class=\"box\"><h2>Is Sage on another computer?</h2>\
             <p>Open the connector on that computer and choose <b>Link with a code</b>. Type the code it shows here:</p>\
             <form method=\"post\" action=\"/link/{token}/code\">\
             <input id=\"user-code\" name=\"user_code\" autocomplete=\"off\" placeholder=\"ABCD-EFGH\" maxlength=\"12\">\
             <button id=\"submit-code\" type=\"submit\">Link</button></form></div>"
        ),
    )
}

/// The button's form.
#[derive(Deserialize)]
pub struct StartForm {
    port: Option<String>,
}

/// `POST /link/{token}/start`: a one-time code, and the browser sent to the connector.
pub async fn start(
    State(state): State<Arc<AppState>>,
    Path(token): Path<String>,
    Form(form): Form<StartForm>,
) -> Response {
    let port = match form.port.as_deref().map(str::parse::<u16>) {
        None => DEFAULT_LOOPBACK_PORT,
        Some(Ok(p)) if p >= 1024 => p,
        _ => {
            return page(
                StatusCode::BAD_REQUEST,
                "Bad request",
                "<p class=\"error\">port must be a number from 1024 to 65535</p>",
            );
        }
    };
    let link_state = super::control::random_token(16);
    let (control, given) = (state.control.clone(), link_state.clone());
    let made = blocking(move || {
        Ok(match control.link(&token)? {
            Some((company, LinkState::Usable)) => control
                .create_link_code(&token, &given, CODE_TTL_SECS)?
                .map(|code| Ok((company, code))),
            Some((_, other)) => Some(Err(other)),
            None => None,
        })
    })
    .await;
    let (company, code) = match made {
        Ok(Some(Ok(made))) => made,
        Ok(Some(Err(other))) => return unusable(other),
        Ok(None) => return not_found(),
        Err(e) => return internal(e),
    };
    tracing::info!(company = %company.id, port, "Sent a browser to the connector's loopback listener with a one-time code.");
    let target = format!(
        "http://127.0.0.1:{port}/link?code={code}&state={link_state}&company={}",
        company.id
    );
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, target),
            (header::CACHE_CONTROL, "no-store".to_owned()),
            (header::REFERRER_POLICY, "no-referrer".to_owned()),
        ],
    )
        .into_response()
}

/// The device-code form.
#[derive(Deserialize)]
pub struct CodeForm {
    user_code: Option<String>,
}

/// `POST /link/{token}/code`: links the connector that shows this user code.
pub async fn enter_code(
    State(state): State<Arc<AppState>>,
    Path(token): Path<String>,
    Form(form): Form<CodeForm>,
) -> Response {
    let typed = form.user_code.unwrap_or_default();
    let (control, given) = (state.control.clone(), token.clone());
    match blocking(move || control.approve_user_code(&given, &typed)).await {
        Ok(Ok(company)) => {
            tracing::info!(company = %company.id, "A user code was typed on the link page: the connector showing it is linked.");
            let back = company
                .redirect_url
                .as_deref()
                .map(|url| {
                    format!(
                        "<p><a id=\"return\" href=\"{}\">Return to the app</a></p>",
                        escape(&redirect_with(url, &company.id, "linking"))
                    )
                })
                .unwrap_or_default();
            page(
                StatusCode::OK,
                "Connector linked",
                &format!(
                    "<h1 id=\"linked\">The connector is linked to {}</h1>\
                     <p>Finish on the computer with Sage: the connector asks for the Sage company and login there, then sends the data.</p>{back}",
                    escape(&company.name)
                ),
            )
        }
        Ok(Err(why)) => page(
            StatusCode::BAD_REQUEST,
            "Code not accepted",
            &format!(
                "<h1>The code was not accepted</h1><p class=\"error\" id=\"error\">{}</p>\
                 <p><a href=\"/link/{}\">Back</a></p>",
                escape(why),
                escape(&token)
            ),
        ),
        Err(e) => internal(e),
    }
}

/// The client's redirect URL with the company id and a status added.
pub fn redirect_with(url: &str, company_id: &str, status: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}companyId={company_id}&status={status}")
}

fn refuse(status: StatusCode, error: &str) -> Response {
    (
        status,
        Json(Refusal {
            error: error.to_owned(),
            status: status.as_u16(),
            reason: None,
            problems: Vec::new(),
        }),
    )
        .into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "A linking request failed inside the server.");
    refuse(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error; it has been logged",
    )
}

fn device_name(name: &str) -> String {
    let name: String = name.chars().filter(|c| !c.is_control()).take(100).collect();
    if name.trim().is_empty() {
        "connector".to_owned()
    } else {
        name.trim().to_owned()
    }
}

/// Creates the device and its answer.
async fn linked(state: &AppState, company_id: &str, name: &str) -> Response {
    let (control, id, name) = (
        state.control.clone(),
        company_id.to_owned(),
        device_name(name),
    );
    let created = blocking(move || {
        let Some(company) = control.company_by_id(&id)? else {
            return Ok(None);
        };
        let (device, credential) = control.create_device(&id, &name)?;
        Ok(Some((company, device, credential)))
    })
    .await;
    match created {
        Ok(None) => refuse(StatusCode::NOT_FOUND, "this company no longer exists"),
        Ok(Some((company, device, credential))) => {
            tracing::info!(company = %company_id, device = %device.id, "A connector was linked.");
            Json(Linked {
                company_id: company.id,
                company_name: company.name,
                device_id: device.id,
                credential,
                redirect_url: company.redirect_url,
            })
            .into_response()
        }
        Err(e) => internal(e),
    }
}

/// `POST /connector/link`: a loopback code for a device credential.
pub async fn redeem(
    State(state): State<Arc<AppState>>,
    body: Result<Json<RedeemRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(body)) = body else {
        return refuse(
            StatusCode::BAD_REQUEST,
            &format!(
                "the body must be JSON with code, state, companyId and deviceName ({REDEEM_PATH})"
            ),
        );
    };
    let (control, given) = (state.control.clone(), body.clone());
    let redeemed =
        blocking(move || control.redeem_link_code(&given.code, &given.state, &given.company_id))
            .await;
    match redeemed {
        Ok(Ok(company)) => linked(&state, &company.id, &body.device_name).await,
        Ok(Err(why)) => {
            tracing::warn!(company = %body.company_id, why, "Refused a loopback code.");
            refuse(StatusCode::BAD_REQUEST, why)
        }
        Err(e) => internal(e),
    }
}

/// `POST /connector/code`: starts a device-code flow.
pub async fn device_code(
    State(state): State<Arc<AppState>>,
    body: Result<Json<DeviceCodeRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let name = body.map(|Json(b)| b.device_name).unwrap_or_default();
    let control = state.control.clone();
    let name = device_name(&name);
    match blocking(move || control.create_device_code(&name, DEVICE_CODE_TTL_SECS)).await {
        Ok((device_code, user_code)) => Json(DeviceCode {
            device_code,
            user_code,
            expires_in: DEVICE_CODE_TTL_SECS as u64,
            interval: 2,
        })
        .into_response(),
        Err(e) => internal(e),
    }
}

/// `POST /connector/token`: the device-code flow's poll (RFC 8628 error names).
pub async fn device_token(
    State(state): State<Arc<AppState>>,
    body: Result<Json<DeviceTokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(body)) = body else {
        return refuse(
            StatusCode::BAD_REQUEST,
            &format!(
                "the body must be JSON with deviceCode ({DEVICE_TOKEN_PATH}; from {DEVICE_CODE_PATH})"
            ),
        );
    };
    let (control, code) = (state.control.clone(), body.device_code.clone());
    match blocking(move || control.poll_device_code(&code)).await {
        Ok(DevicePoll::Approved {
            company_id,
            device_name,
        }) => linked(&state, &company_id, &device_name).await,
        Ok(DevicePoll::Pending) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "authorization_pending", "status": 400})),
        )
            .into_response(),
        Ok(DevicePoll::Expired) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "expired_token", "status": 400})),
        )
            .into_response(),
        Ok(DevicePoll::Unknown) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant", "status": 400})),
        )
            .into_response(),
        Err(e) => internal(e),
    }
}

/// `GET /download`: where the installer would be; says how to get the connector.
pub async fn download() -> Response {
    page(
        StatusCode::OK,
        "Download the Sage Connector",
        "<h1>Download the Sage Connector</h1><p>Install <b>SageConnector-setup.exe</b> on the PC where Sage 50 Accounts runs, \
         as the Windows user who uses Sage. It starts by itself at logon and shows an icon next to the clock.</p>",
    )
}
