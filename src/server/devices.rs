//! The routes a linked connector calls with its device credential, under
//! `/companies/{id}/connector/…` (see [`crate::protocol`] for the conversation).
//!
//! A device credential acts only on its own company: any other company id is a 404 (the same
//! answer as a company that does not exist), and the API clients' routes refuse it (401).
//! A revoked device gets 401 with the reason `device_revoked`.
//!
//! Publishing through the server, so that no store credential is ever on a desktop:
//! 1. **Grants**: for each data file the store lacks, a pre-signed PUT URL valid for
//!    [`GRANT_SECS`] (S3 and friends), or a one-time upload route of the server's own where the
//!    store cannot pre-sign (a local folder). Keys must be the company's own data keys.
//! 2. **Commit**: the manifest. The server runs the checks it runs at ingest — the manifest's
//!    versions and company, every file present with its size and SHA-256 — writes the
//!    manifest ("create if absent") and advances `latest` with the conditional write of
//!    [`crate::publish`]. The files it read go into the ingest cache, so going live does not
//!    fetch them again.
//! 3. **Result**: a failed sync is recorded and sent to the client as `sync.failed`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::api::AppState;
use super::control::{Device, DeviceAuth, blocking};
use crate::protocol::{
    CheckIn, CheckInAnswer, Committed, DEVICE_CREDENTIAL_PREFIX, GrantRequest, Grants, Reason,
    Refusal, SyncResult, UPLOAD, Upload, device_path,
};
use crate::snapshot::manifest::Latest;

/// Seconds an upload grant stays valid.
pub const GRANT_SECS: u64 = 3600;
/// Longest long poll at check-in.
pub const MAX_WAIT_SECS: u64 = 60;

/// An upload the server itself takes (stores that cannot pre-sign).
#[derive(Debug, Clone)]
pub struct UploadGrant {
    company_id: String,
    key: String,
    sha256: String,
    bytes: u64,
    expires: Instant,
}

/// Upload grants by token.
pub type GrantTable = std::sync::Mutex<HashMap<String, UploadGrant>>;

fn refuse(status: StatusCode, error: impl Into<String>, reason: Option<Reason>) -> Response {
    (
        status,
        Json(Refusal {
            error: error.into(),
            status: status.as_u16(),
            reason: reason.map(|r| r.code().to_owned()),
            problems: Vec::new(),
        }),
    )
        .into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "A connector's request failed inside the server.");
    refuse(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error; it has been logged",
        None,
    )
}

/// The server could not finish now (its store or its own disk failed): 503 with
/// `Retry-After`, which the connector retries; nothing was committed.
fn unavailable(e: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "A connector's request could not be finished now; it is told to retry.");
    let mut answer = refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        "the server could not finish this now; nothing was committed: try again",
        None,
    );
    answer
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
    answer
}

/// Authenticates a device credential and checks the company in the path is its own.
pub async fn authenticate(
    State(state): State<Arc<AppState>>,
    Path(params): Path<HashMap<String, String>>,
    headers: HeaderMap,
    mut request: Request,
    next: Next,
) -> Response {
    let credential = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    if !credential.starts_with(DEVICE_CREDENTIAL_PREFIX) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "connector routes take a device credential (Authorization: Bearer dv_…), not an API key",
            None,
        );
    }
    // a look-up costs the database: its address pays a token first, given back when the
    // credential is valid (or revoked: a known one), as with API keys
    let peer = super::api::peer_of(&request);
    let quota = match state.begin_look_up(peer) {
        Ok(quota) => quota,
        Err(refused) => return *refused,
    };
    // (the control plane is asked on the blocking pool: never on an async worker)
    let (control, given) = (state.control.clone(), credential.to_owned());
    let auth = blocking(move || control.authenticate_device(&given)).await;
    state.looked_up(
        peer,
        matches!(auth, Ok(DeviceAuth::Valid(_) | DeviceAuth::Revoked(_))),
    );
    let device = match auth {
        Ok(DeviceAuth::Valid(d)) => d,
        Ok(DeviceAuth::Revoked(d)) => {
            tracing::warn!(device = %d.id, company = %d.company_id, "A revoked connector called.");
            return refuse(
                StatusCode::UNAUTHORIZED,
                "this connector was revoked: link it again from the app",
                Some(Reason::DeviceRevoked),
            );
        }
        Ok(DeviceAuth::Invalid) => {
            let mut refusal = refuse(
                StatusCode::UNAUTHORIZED,
                "this device credential is not valid",
                None,
            );
            if let Some(quota) = quota {
                quota.write(refusal.headers_mut());
            }
            return refusal;
        }
        Err(e) => return internal(e),
    };
    if params.get("id").map(String::as_str) != Some(device.company_id.as_str()) {
        return refuse(
            StatusCode::NOT_FOUND,
            format!(
                "company {} not found",
                params.get("id").map(String::as_str).unwrap_or("")
            ),
            None,
        );
    }
    request.extensions_mut().insert(device);
    next.run(request).await
}

/// `?wait=SECONDS`.
#[derive(Deserialize)]
pub struct WaitParam {
    wait: Option<u64>,
}

/// A connector that has not checked in for this long is not running (or its PC is off), by
/// default (`connector-server serve --connector-silence-secs`).
pub const NOT_SEEN_SECS: i64 = 5 * 60;

/// Why a company's data is not being kept fresh, as its connector last said (or its silence
/// says): `{reason, advice, message, check, since, warnings}`, or None when nothing is wrong.
/// The first problem its own checks found wins, then the last sync's failure; a connector not
/// silent for `silence_secs` is `not_running`. Warnings are listed, not a reason.
pub fn connector_reason(
    devices: &[crate::server::control::Device],
    silence_secs: i64,
) -> Option<serde_json::Value> {
    let Some(device) = devices.iter().find(|d| d.revoked_at.is_none()) else {
        // every connector of the company was revoked: it cannot sync until linked again
        let revoked = devices.iter().find(|d| d.revoked_at.is_some())?;
        return Some(serde_json::json!({
            "reason": Reason::DeviceRevoked.code(), "advice": Reason::DeviceRevoked.advice(),
            "message": format!("the connector on {} was disconnected", revoked.name),
            "check": "credential", "since": revoked.revoked_at, "warnings": [],
        }));
    };
    let seen = device
        .last_seen_at
        .as_deref()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
    let status: CheckIn = device
        .status
        .clone()
        .and_then(|s| serde_json::from_value(s).ok())
        .unwrap_or_default();
    let warnings: Vec<&str> = status
        .problems
        .iter()
        .filter(|p| p.warning)
        .map(|p| p.reason.code())
        .collect();
    let silent = seen.is_none_or(|t| {
        (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds() > silence_secs
    });
    let (reason, check, message) = if silent {
        (
            Reason::NotRunning,
            "checkin".to_owned(),
            match &device.last_seen_at {
                Some(t) => format!("the connector on {} last checked in at {t}", device.name),
                None => format!("the connector on {} has never checked in", device.name),
            },
        )
    } else if let Some(p) = status.problems.iter().find(|p| !p.warning) {
        (p.reason, p.check.clone(), p.message.clone())
    } else if let Some(r) = status.last_error {
        (r, "last_sync".to_owned(), "the last sync failed".to_owned())
    } else {
        return (!warnings.is_empty()).then(|| {
            serde_json::json!({"reason": null, "advice": null, "message": null, "check": null,
                               "since": status.last_sync_at, "warnings": warnings})
        });
    };
    Some(serde_json::json!({
        "reason": reason.code(), "advice": reason.advice(), "message": message, "check": check,
        "since": if silent { device.last_seen_at.clone() } else { status.last_sync_at.clone() },
        "warnings": warnings,
    }))
}

/// The reason code in a [`connector_reason`], if any.
fn reason_code(reason: &Option<serde_json::Value>) -> Option<String> {
    reason
        .as_ref()
        .and_then(|r| r["reason"].as_str().map(str::to_owned))
}

/// Tells the company's client (`company.status_changed`) when the connector's reason differs
/// from the one last told: at check-in, and from the server's sweep (a connector falling
/// silent). A company first seen by this server process is noted, not told.
pub fn tell_reason(state: &AppState, company_id: &str) {
    let devices = state.control.devices(company_id).unwrap_or_default();
    let now = connector_reason(&devices, state.connector_silence_secs);
    // what the change is about: nodes sharing the control plane that see the same change
    // (the same reasons, the same last call) queue one event
    let last_seen = devices
        .iter()
        .filter_map(|d| d.last_seen_at.as_deref())
        .max();
    let now_code = reason_code(&now);
    let before = {
        let mut told = state.told_reasons.lock().unwrap_or_else(|e| e.into_inner());
        match told.get(company_id) {
            None => {
                told.insert(company_id.to_owned(), now_code);
                return;
            }
            Some(b) if *b == now_code => return,
            Some(b) => {
                let b = b.clone();
                told.insert(company_id.to_owned(), now_code.clone());
                b
            }
        }
    };
    let Ok(Some(company)) = state.control.company_by_id(company_id) else {
        return;
    };
    let data = crate::server::company_status(&*state.control, company_id);
    tracing::info!(company = %company.id, reason = ?now_code, was = ?before, "The connector's reason changed.");
    crate::server::emit(
        state,
        &company.client_id,
        "company.status_changed",
        serde_json::json!({
            "companyId": company.id,
            "from": if before.is_some() { "Failing" } else { data },
            "to": if now_code.is_some() { "Failing" } else { data },
            "reason": now_code,
            "previousReason": before,
            "advice": now.as_ref().and_then(|a| a["advice"].as_str().map(str::to_owned)),
            "message": now.as_ref().and_then(|a| a["message"].as_str().map(str::to_owned)),
        }),
        Some(format!(
            "company.status_changed:{}:{before:?}:{now_code:?}:{last_seen:?}",
            company.id
        )),
    );
}

/// `POST …/checkin`: the connector's status in; queued work, configuration and maybe a
/// rotated credential out. Holds the answer up to `wait` seconds for a sync request.
pub async fn checkin(
    State(state): State<Arc<AppState>>,
    Extension(device): Extension<Device>,
    Query(params): Query<WaitParam>,
    body: Result<Json<CheckIn>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(body)) = body else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the body must be a check-in (connectorVersion, os, state, …)",
            None,
        );
    };
    let status = serde_json::to_value(&body).unwrap_or_default();
    // A company first seen by this process: what it was before this check-in is what its
    // client knows (the sweep notes the others without telling).
    let known = state
        .told_reasons
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains_key(&device.company_id);
    let (s, d) = (state.clone(), device.clone());
    let recorded = blocking(move || {
        if !known {
            let before = s
                .control
                .devices(&d.company_id)
                .ok()
                .and_then(|v| reason_code(&connector_reason(&v, s.connector_silence_secs)));
            s.told_reasons
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(d.company_id.clone())
                .or_insert(before);
        }
        s.control.record_checkin(&d.id, &status)?;
        tell_reason(&s, &d.company_id);
        s.control.rotate_device(&d.id, s.rotate_after_secs)
    })
    .await;
    let credential = match recorded {
        Ok(c) => c,
        Err(e) => return internal(e),
    };
    let company = device.company_id.clone();
    let wake = state.company_wake(&company);
    let deadline =
        Instant::now() + Duration::from_secs(params.wait.unwrap_or(0).min(MAX_WAIT_SECS));
    let sync_requested = loop {
        // Listen before looking, so a request queued in between is not missed.
        let notified = wake.notified();
        let (control, co, id) = (state.control.clone(), company.clone(), device.id.clone());
        let looked = blocking(move || {
            Ok((
                control.take_sync_request(&co)?,
                control.device_revoked(&id).ok().flatten(),
            ))
        })
        .await;
        let revoked = match looked {
            Ok((Some(id), _)) => break Some(id),
            Ok((None, revoked)) => revoked,
            Err(e) => return internal(e),
        };
        if revoked == Some(true) {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "this connector was revoked: link it again from the app",
                Some(Reason::DeviceRevoked),
            );
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break None;
        }
        let _ = tokio::time::timeout(left, notified).await;
    };
    if let Some(id) = &sync_requested {
        tracing::info!(company = %company, request = %id, "Handed a requested sync to the connector.");
    }
    Json(CheckInAnswer {
        sync_requested,
        checkin_secs: state.checkin_secs,
        sync_every_secs: state.sync_every_secs,
        credential,
        server_time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
    .into_response()
}

fn own_data_key(company: &str, key: &str, sha256: &str) -> bool {
    crate::snapshot::is_data_key_of(company, key, sha256)
}

/// `POST …/grants`: where to upload each missing file.
pub async fn grants(
    State(state): State<Arc<AppState>>,
    Extension(device): Extension<Device>,
    body: Result<Json<GrantRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(body)) = body else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the body must be JSON with snapshotId and files [{key, sha256, bytes}]",
            None,
        );
    };
    let Some(store) = &state.store else {
        return internal("the server has no store");
    };
    let company = &device.company_id;
    let mut uploads = Vec::new();
    let mut present = Vec::new();
    for file in &body.files {
        if !own_data_key(company, &file.key, &file.sha256) {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!(
                    "key {} is not a data key of company {company} for SHA-256 {}",
                    file.key, file.sha256
                ),
                None,
            );
        }
        let path = store.path(&file.key);
        match store.object_store().head(&path).await {
            Ok(meta) if meta.size == file.bytes => {
                present.push(file.key.clone());
                continue;
            }
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return internal(e),
        }
        let upload = match &store.signer {
            Some(signer) => match signer
                .signed_url(
                    object_store::signer::Method::PUT,
                    &path,
                    Duration::from_secs(GRANT_SECS),
                )
                .await
            {
                Ok(url) => Upload {
                    key: file.key.clone(),
                    method: "PUT".into(),
                    url: url.to_string(),
                    headers: Default::default(),
                    via_server: false,
                },
                Err(e) => return internal(e),
            },
            None => {
                let token = super::control::random_token(24);
                state
                    .grants
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(
                        token.clone(),
                        UploadGrant {
                            company_id: company.clone(),
                            key: file.key.clone(),
                            sha256: file.sha256.clone(),
                            bytes: file.bytes,
                            expires: Instant::now() + Duration::from_secs(GRANT_SECS),
                        },
                    );
                Upload {
                    key: file.key.clone(),
                    method: "PUT".into(),
                    url: format!(
                        "{}{}/{token}",
                        state.public_url,
                        device_path(company, UPLOAD)
                    ),
                    headers: Default::default(),
                    via_server: true,
                }
            }
        };
        uploads.push(upload);
    }
    tracing::info!(company = %company, snapshot = %body.snapshot_id, to_upload = uploads.len(), present = present.len(), "Granted uploads.");
    Json(Grants {
        uploads,
        present,
        expires_in: GRANT_SECS,
    })
    .into_response()
}

/// `PUT …/upload/{token}`: a data file, for stores that cannot pre-sign.
pub async fn upload(
    State(state): State<Arc<AppState>>,
    Extension(device): Extension<Device>,
    Path(params): Path<HashMap<String, String>>,
    body: Body,
) -> Response {
    let token = params.get("token").cloned().unwrap_or_default();
    let grant = {
        let mut grants = state.grants.lock().unwrap_or_else(|e| e.into_inner());
        grants.retain(|_, g| g.expires > Instant::now());
        grants.get(&token).cloned()
    };
    let Some(grant) = grant.filter(|g| g.company_id == device.company_id) else {
        return refuse(
            StatusCode::NOT_FOUND,
            "this upload grant is not valid (expired or used): ask for grants again",
            None,
        );
    };
    let Some(store) = &state.store else {
        return internal("the server has no store");
    };
    let bytes = match axum::body::to_bytes(body, grant.bytes as usize + 1).await {
        Ok(b) => b,
        Err(_) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "{} is granted {} bytes; more were sent",
                    grant.key, grant.bytes
                ),
                None,
            );
        }
    };
    let sha = crate::snapshot::hex(&Sha256::digest(&bytes));
    if bytes.len() as u64 != grant.bytes || sha != grant.sha256 {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "{}: {} bytes with SHA-256 {sha} were sent; the grant is for {} bytes with SHA-256 {}",
                grant.key,
                bytes.len(),
                grant.bytes,
                grant.sha256
            ),
            None,
        );
    }
    let path = store.path(&grant.key);
    match store
        .object_store()
        .put_opts(
            &path,
            PutPayload::from(bytes),
            PutOptions::from(PutMode::Create),
        )
        .await
    {
        Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => {
            state
                .grants
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&token);
            StatusCode::CREATED.into_response()
        }
        Err(e) => internal(e),
    }
}

/// `POST …/commit`: checks the snapshot and advances `latest`.
pub async fn commit(
    State(state): State<Arc<AppState>>,
    Extension(device): Extension<Device>,
    body: axum::body::Bytes,
) -> Response {
    let Some(store) = &state.store else {
        return internal("the server has no store");
    };
    let company = &device.company_id;
    let snapshot_id = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            v.get("snapshotId")
                .and_then(|s| s.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let refused = |problems: Vec<String>| {
        tracing::warn!(company = %company, snapshot = %snapshot_id, problems = ?problems, "Refused a snapshot at commit.");
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(Refusal {
                error: format!(
                    "snapshot {snapshot_id} was refused: {}",
                    problems.join("; ")
                ),
                status: 422,
                reason: Some(Reason::CommitRefused.code().to_owned()),
                problems,
            }),
        )
            .into_response()
    };
    if !crate::snapshot::manifest::is_snapshot_id(&snapshot_id) {
        return refused(vec!["the body is not a manifest with a snapshotId".into()]);
    }
    let (manifest, mut problems) =
        crate::publish::check_manifest(&body, company, &snapshot_id, None);
    let Some(manifest) = manifest else {
        return refused(problems);
    };
    let cache = super::ingest::cache_dir(&state.state_dir, company);
    for (name, entry) in manifest.files() {
        if !own_data_key(company, &entry.key, &entry.sha256) {
            problems.push(format!(
                "{name}: {} is not one of this company's data keys",
                entry.key
            ));
            continue;
        }
        match super::ingest::fetch_into_cache(store, company, &cache, name, entry).await {
            Ok(_) => {}
            Err(super::ingest::CacheError::Refused(problem)) => problems.push(problem),
            Err(super::ingest::CacheError::Later(e)) => return unavailable(e),
        }
    }
    if !problems.is_empty() {
        return refused(problems);
    }
    let manifest_key = crate::snapshot::manifest_key(company, &snapshot_id);
    let path = store.path(&manifest_key);
    match store
        .object_store()
        .put_opts(
            &path,
            PutPayload::from(body.clone()),
            PutOptions::from(PutMode::Create),
        )
        .await
    {
        Ok(_) => {}
        Err(object_store::Error::AlreadyExists { .. }) => {
            // A commit repeated after a lost answer: the same bytes are fine, others are not.
            match store.get_bytes(&manifest_key).await {
                Ok(Some(existing)) if existing == body => {}
                Ok(_) => {
                    return refused(vec![format!(
                        "{manifest_key} exists with other content: a snapshot id is never reused"
                    )]);
                }
                Err(e) => return internal(e),
            }
        }
        Err(e) => return internal(e),
    }
    let latest = Latest {
        snapshot_id: snapshot_id.clone(),
        manifest_key,
        manifest_sha256: crate::snapshot::hex(&Sha256::digest(&body)),
    };
    let is_latest = match store.advance_latest(company, &latest).await {
        Ok(b) => b,
        Err(e) => return internal(e),
    };
    tracing::info!(company = %company, snapshot = %snapshot_id, is_latest, "A connector committed a snapshot.");
    state.wake_for(company);
    let bytes_metadata =
        body.len() as u64 + serde_json::to_vec_pretty(&latest).map_or(0, |v| v.len() as u64);
    Json(Committed {
        snapshot_id,
        is_latest,
        bytes_metadata,
    })
    .into_response()
}

/// `GET …/latest`: the company's latest published snapshot id.
pub async fn latest(
    State(state): State<Arc<AppState>>,
    Extension(device): Extension<Device>,
) -> Response {
    let Some(store) = &state.store else {
        return internal("the server has no store");
    };
    match store.latest(&device.company_id).await {
        Ok(l) => {
            Json(serde_json::json!({"snapshotId": l.map(|(l, _)| l.snapshot_id)})).into_response()
        }
        Err(e) => internal(e),
    }
}

/// `POST …/result`: a sync's outcome; a failure is sent to the client as `sync.failed`.
pub async fn result(
    State(state): State<Arc<AppState>>,
    Extension(device): Extension<Device>,
    body: Result<Json<SyncResult>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(body)) = body else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the body must be a sync result (ok, reason, message, startedAt, finishedAt)",
            None,
        );
    };
    let told = blocking(move || {
        state
            .control
            .record_sync_result(&device.company_id, &device.id, &body)?;
        if body.ok {
            return Ok(());
        }
        let Some(company) = state.control.company_by_id(&device.company_id)? else {
            return Ok(());
        };
        tracing::warn!(company = %company.id, reason = ?body.reason, "A connector reported a failed sync.");
        super::emit(
            &state,
            &company.client_id,
            "sync.failed",
            serde_json::json!({
                "companyId": company.id,
                "reason": body.reason.map(|r| r.code()),
                "message": body.message,
                "advice": body.reason.map(|r| r.advice()),
                "requestId": body.request_id,
                "startedAt": body.started_at,
                "finishedAt": body.finished_at,
            }),
            // a result sent again (its answer was lost) is the same event
            body.request_id
                .as_ref()
                .map(|r| format!("sync.failed:{}:{r}", company.id)),
        );
        Ok(())
    })
    .await;
    if let Err(e) = told {
        return internal(e);
    }
    StatusCode::NO_CONTENT.into_response()
}
