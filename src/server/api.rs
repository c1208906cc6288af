//! The HTTP API: JSON over axum. Every route but `/healthz` and `/metrics` needs
//! `Authorization: Bearer <api key>`; a company that is not the caller's is a 404, the same
//! answer as one that does not exist. Bad requests are 4xx with a message naming the field or
//! token at fault, never a 500.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::control::{Client, Company, ControlPlane};
use super::ingest::{Live, LiveSet};
use super::query;
use crate::model::DataModel;

/// Largest page.
pub const MAX_PAGE_SIZE: u64 = 5000;
/// Page size when none is asked for.
pub const DEFAULT_PAGE_SIZE: u64 = 100;

/// What every handler shares.
pub struct AppState {
    /// Clients, companies, history.
    pub control: Arc<dyn ControlPlane>,
    /// Loaded snapshots.
    pub live: Arc<LiveSet>,
    /// The data model served.
    pub model: DataModel,
    /// Requests per second allowed per API key (burst: twice that).
    pub rate_per_sec: f64,
    /// Token buckets per client: (tokens, last refill).
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
    /// SHA-256 of keys already found valid (keys are never revoked) → their client: no
    /// database look-up per request, and no raw key compared (or kept) here.
    /// API keys' hashes already looked up, as of the control data's version.
    known_keys: Mutex<(i64, HashMap<String, Client>)>,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    /// Deadline and concurrency limits of data queries.
    pub limits: super::limits::QueryLimits,
    /// Deadline of one request (not the connector's routes: uploads and long polls).
    pub request_timeout: std::time::Duration,
    /// Requests per second per IP address without a valid API key.
    pub unauthenticated_rate: f64,
    /// Token buckets of requests without a valid API key, per IP address.
    ip_buckets: Mutex<HashMap<std::net::IpAddr, (f64, Instant)>>,
    /// Token buckets of look-ups of credentials not known yet (API keys, device
    /// credentials), per IP address: a look-up takes a token first, and a valid credential
    /// gives it back, so only wrong ones spend it (at the same rate as `ip_buckets`).
    lookup_buckets: Mutex<HashMap<std::net::IpAddr, (f64, Instant)>>,
    /// SHA-256 of the token `/metrics` asks for; None: `/metrics` is off.
    pub metrics_token: Option<[u8; 32]>,
    /// Wakes the ingest loop (the "snapshot published" call, a connector's commit, a stop).
    pub wake: tokio::sync::Notify,
    /// The companies wake calls named since the ingest loop last looked: a wake ingests only
    /// them, never every company.
    pub woken: Mutex<std::collections::BTreeSet<String>>,
    /// The OpenAPI document, generated from the model.
    openapi: Value,
    /// Wakes the webhook delivery worker.
    pub webhook_wake: Arc<tokio::sync::Notify>,
    /// Where webhooks may go, and how their hosts are looked up.
    pub webhook_targets: Arc<super::webhooks::Targets>,
    /// Benchmark peer: answer every data request by reading the snapshot's Parquet file with
    /// a fresh DuckDB, instead of the loaded tables.
    pub naive: bool,
    /// Where connectors publish (device routes: grants, uploads, commit).
    pub store: Option<crate::publish::Store>,
    /// The server's state folder (the ingest cache that commit fills).
    pub state_dir: std::path::PathBuf,
    /// Where pages already reached begin (see [`PageStarts`]).
    page_starts: PageStarts,
    /// Counts of listings already counted (see [`Counts`]).
    counts: Counts,
    /// Answers already given (see [`Answers`]).
    answers: Answers,
    /// Data types' rows kept in memory, which answer pages and records without DuckDB.
    pub served: Arc<super::served::ServedSet>,
    /// The server's public base URL (link URLs, upload grants).
    pub public_url: String,
    /// The connector's loopback port the link page sends browsers to.
    pub loopback_port: u16,
    /// Where the link page's download link points.
    pub download_url: String,
    /// Seconds a link stays usable.
    pub link_ttl_secs: i64,
    /// Most companies one client may create.
    pub max_companies_per_client: usize,
    /// Device credentials older than this are rotated at check-in.
    pub rotate_after_secs: i64,
    /// Seconds between check-ins, told to connectors.
    pub checkin_secs: u64,
    /// Seconds between scheduled syncs, told to connectors.
    pub sync_every_secs: u64,
    /// Upload grants of the server's own upload route.
    pub grants: super::devices::GrantTable,
    /// Wakes a company's long-polling check-in when work is queued for it.
    company_wakes: Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
    /// A connector silent this long is `not_running`.
    pub connector_silence_secs: i64,
    /// The connector reason last told to each company's client (`company.status_changed`).
    pub told_reasons: Mutex<HashMap<String, Option<String>>>,
    /// This server process's name among the nodes that share a control plane (it claims
    /// ingests under it).
    pub node: String,
    /// Per company, the snapshot this node serves that it knows to be recorded (by itself
    /// or another node): no control-plane look-up at each poll.
    pub recorded: Mutex<HashMap<String, String>>,
    /// How long this node holds what it claims from the control plane.
    pub leases: super::Leases,
    /// Per company, a snapshot this node refused that is not recorded yet (see
    /// [`super::Refusal`]).
    pub(crate) refusals: Mutex<HashMap<String, super::Refusal>>,
    /// (client, company) pairs found owned: no control-plane look-up per request.
    owned_companies: Mutex<HashMap<(String, String), Company>>,
    /// When a request last asked the ingest loop to look at a company this node serves
    /// nothing of.
    asked: Mutex<HashMap<String, Instant>>,
}

impl AppState {
    /// Keeps at most `bytes` of answers given (see [`Answers`]): part of the server's memory
    /// limit when it has one.
    pub fn keep_answers(&mut self, bytes: usize) {
        self.answers = Answers::holding(bytes);
    }

    /// Asks the ingest loop to look at `company`'s store now (and at no other company).
    pub fn wake_for(&self, company: &str) {
        self.woken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(company.to_owned());
        self.wake.notify_one();
    }

    /// State for a server.
    pub fn new(
        control: Arc<dyn ControlPlane>,
        live: Arc<LiveSet>,
        model: DataModel,
        rate_per_sec: f64,
        webhook_targets: Arc<super::webhooks::Targets>,
    ) -> Self {
        AppState {
            control,
            live,
            rate_per_sec,
            buckets: Mutex::new(HashMap::new()),
            known_keys: Mutex::new((i64::MIN, HashMap::new())),
            metrics: Metrics::default(),
            limits: Default::default(),
            request_timeout: std::time::Duration::from_secs(30),
            unauthenticated_rate: 50.0,
            ip_buckets: Mutex::new(HashMap::new()),
            lookup_buckets: Mutex::new(HashMap::new()),
            metrics_token: None,
            wake: tokio::sync::Notify::new(),
            woken: Mutex::new(Default::default()),
            openapi: super::openapi::document(&model),
            webhook_wake: Arc::new(tokio::sync::Notify::new()),
            webhook_targets,
            naive: false,
            model,
            store: None,
            state_dir: std::path::PathBuf::from("server-state"),
            public_url: "http://127.0.0.1:8080".into(),
            loopback_port: crate::protocol::DEFAULT_LOOPBACK_PORT,
            download_url: "/download".into(),
            link_ttl_secs: 3600,
            max_companies_per_client: DEFAULT_MAX_COMPANIES_PER_CLIENT,
            rotate_after_secs: 24 * 3600,
            checkin_secs: 15 * 60,
            sync_every_secs: 24 * 3600,
            grants: Default::default(),
            company_wakes: Mutex::new(HashMap::new()),
            connector_silence_secs: super::devices::NOT_SEEN_SECS,
            told_reasons: Mutex::new(HashMap::new()),
            node: super::node_name(),
            recorded: Mutex::new(HashMap::new()),
            leases: Default::default(),
            asked: Mutex::new(HashMap::new()),
            owned_companies: Mutex::new(HashMap::new()),
            refusals: Mutex::new(HashMap::new()),
            page_starts: PageStarts::default(),
            counts: Counts::default(),
            answers: Answers::default(),
            served: Default::default(),
        }
    }

    /// Runs a control-plane call on a blocking thread: the database and its lock never hold
    /// up an async worker.
    pub async fn control_call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn ControlPlane) -> Result<T, super::control::ControlError> + Send + 'static,
    ) -> ApiResult<T> {
        let control = self.control.clone();
        super::control::blocking(move || f(&*control))
            .await
            .map_err(ApiError::internal)
    }

    /// The notifier of a company's long-polling check-ins.
    pub fn company_wake(&self, company: &str) -> Arc<tokio::sync::Notify> {
        self.company_wakes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(company.to_owned())
            .or_default()
            .clone()
    }

    /// Takes a token from `client`'s bucket; `Err(seconds)` until one is there.
    fn admit(&self, client: &str) -> Result<Quota, u64> {
        take_token(&self.buckets, client.to_owned(), self.rate_per_sec)
    }

    /// Before a credential not known yet is looked up: takes a token of its address's
    /// look-up bucket (what is left, None when the address is unknown), or the 429 answer
    /// while that bucket is empty. The token is taken before the look-up, so requests in
    /// flight at once cannot pass on one token; [`AppState::looked_up`] gives it back for a
    /// valid credential.
    pub(crate) fn begin_look_up(
        &self,
        peer: Option<std::net::IpAddr>,
    ) -> Result<Option<Quota>, Box<Response>> {
        let Some(peer) = peer else {
            return Ok(None);
        };
        match take_token(&self.lookup_buckets, peer, self.unauthenticated_rate) {
            Ok(mut quota) => {
                quota.policy = "per-address";
                Ok(Some(quota))
            }
            Err(wait) => Err(Box::new(self.too_many(
                "too many wrong API keys or device credentials from this address",
                wait,
            ))),
        }
    }

    /// After a look-up: a valid credential gives its address's token back.
    pub(crate) fn looked_up(&self, peer: Option<std::net::IpAddr>, valid: bool) {
        if let (Some(peer), true) = (peer, valid) {
            give_back(&self.lookup_buckets, peer, self.unauthenticated_rate);
        }
    }

    /// The 429 answer to a request without a valid key whose address's bucket is empty.
    fn too_many_unauthenticated(&self, wait: u64) -> Response {
        self.too_many(
            "too many requests without a valid API key from this address",
            wait,
        )
    }

    /// A 429 saying `what` and when to retry (`Retry-After`), counted in the metrics.
    fn too_many(&self, what: &str, wait: u64) -> Response {
        self.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
        let mut response = ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            format!("{what}; retry in {wait} s"),
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait));
        response
    }

    /// Takes a token from the address's bucket: what is left of it (None: no known address),
    /// or the seconds to wait.
    fn admit_unauthenticated(&self, peer: Option<std::net::IpAddr>) -> Result<Option<Quota>, u64> {
        let Some(peer) = peer else {
            return Ok(None);
        };
        let mut quota = take_token(&self.ip_buckets, peer, self.unauthenticated_rate)?;
        quota.policy = "per-address";
        Ok(Some(quota))
    }
}

/// What is left of a key's rate limit after a request, for its answer's headers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Quota {
    /// Requests a full bucket holds (a burst).
    limit: u64,
    /// Requests that can be made now.
    remaining: u64,
    /// Seconds until the bucket is full again.
    reset: u64,
    /// Requests per second it refills at.
    rate: f64,
    /// Whose bucket: `per-key`, or `per-address` for requests without a key.
    policy: &'static str,
}

impl Quota {
    /// `X-RateLimit-Limit`, `-Remaining` and `-Reset` (seconds), and the IETF draft's
    /// `RateLimit-Policy` and `RateLimit` fields saying the same.
    pub(crate) fn write(self, headers: &mut HeaderMap) {
        let mut put = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        };
        put("x-ratelimit-limit", self.limit.to_string());
        put("x-ratelimit-remaining", self.remaining.to_string());
        put("x-ratelimit-reset", self.reset.to_string());
        let window = (self.limit as f64 / self.rate).ceil().max(1.0) as u64;
        put(
            "ratelimit-policy",
            format!("\"{}\";q={};w={window}", self.policy, self.limit),
        );
        put(
            "ratelimit",
            format!("\"{}\";r={};t={}", self.policy, self.remaining, self.reset),
        );
    }
}

/// Takes a token from `key`'s bucket (refilled at `rate` a second, holding twice that): what
/// is left, or `Err(seconds)` until one is there. Full buckets are forgotten when the map
/// grows large.
fn take_token<K: std::hash::Hash + Eq>(
    buckets: &Mutex<HashMap<K, (f64, Instant)>>,
    key: K,
    rate: f64,
) -> Result<Quota, u64> {
    let burst = rate * 2.0;
    let mut buckets = buckets.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    if buckets.len() >= 100_000 {
        buckets.retain(|_, (tokens, last)| {
            *tokens + now.duration_since(*last).as_secs_f64() * rate < burst
        });
    }
    let (tokens, last) = buckets.entry(key).or_insert((burst, now));
    *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(burst);
    *last = now;
    if *tokens >= 1.0 {
        *tokens -= 1.0;
        Ok(Quota {
            limit: burst.floor() as u64,
            remaining: tokens.floor() as u64,
            reset: ((burst - *tokens) / rate).ceil() as u64,
            rate,
            policy: "per-key",
        })
    } else {
        Err(((1.0 - *tokens) / rate).ceil().max(1.0) as u64)
    }
}

/// Gives a token back to `key`'s bucket (never past a full one).
fn give_back<K: std::hash::Hash + Eq>(
    buckets: &Mutex<HashMap<K, (f64, Instant)>>,
    key: K,
    rate: f64,
) {
    let mut buckets = buckets.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((tokens, _)) = buckets.get_mut(&key) {
        *tokens = (*tokens + 1.0).min(rate * 2.0);
    }
}

/// The address a request came from, as the listener recorded it.
pub(crate) fn peer_of(request: &Request) -> Option<std::net::IpAddr> {
    request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

/// Prometheus counters.
#[derive(Default)]
pub struct Metrics {
    /// Requests answered, by class.
    pub requests_2xx: AtomicU64,
    /// 4xx answers.
    pub requests_4xx: AtomicU64,
    /// 5xx answers.
    pub requests_5xx: AtomicU64,
    /// Requests refused by the rate limit.
    pub rate_limited: AtomicU64,
    /// Snapshots that went live.
    pub snapshots_live: AtomicU64,
    /// Snapshots refused at ingest.
    pub snapshots_failed: AtomicU64,
    /// Data requests answered from rows in memory.
    pub from_memory: AtomicU64,
}

/// Default of the most companies one client may create (`--max-companies-per-client`).
pub const DEFAULT_MAX_COMPANIES_PER_CLIENT: usize = 100_000;
/// Most webhook subscriptions one client may have.
pub const MAX_WEBHOOKS_PER_CLIENT: usize = 25;
/// Longest URL a client may give (a webhook target, a redirect).
pub const MAX_URL_CHARS: usize = 2048;

/// A URL a client gave, no longer than [`MAX_URL_CHARS`].
fn url_length(field: &str, url: &str) -> ApiResult<()> {
    let n = url.chars().count();
    if n > MAX_URL_CHARS {
        return Err(ApiError::bad(format!(
            "field {field:?} is {n} characters long; the limit is {MAX_URL_CHARS}"
        )));
    }
    Ok(())
}

/// An error answer: status and message.
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn bad(message: impl Into<String>) -> Self {
        ApiError(StatusCode::BAD_REQUEST, message.into())
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        ApiError(StatusCode::NOT_FOUND, message.into())
    }

    /// 503 with `Retry-After`: answerable in a moment, not now.
    fn busy(message: impl Into<String>) -> Self {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, message.into())
    }

    fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "A request failed inside the server.");
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; it has been logged".into(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.0,
            Json(json!({"error": self.1, "status": self.0.as_u16()})),
        )
            .into_response();
        // a busy answer says when to come back (the rate limit puts its own wait)
        if matches!(
            self.0,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(1));
        }
        response
    }
}

impl From<super::limits::Refusal> for ApiError {
    fn from(refusal: super::limits::Refusal) -> Self {
        use super::limits::Refusal as R;
        match refusal {
            R::KeyBusy { .. } => ApiError(StatusCode::TOO_MANY_REQUESTS, refusal.to_string()),
            R::ServerBusy | R::TimedOut { .. } => {
                tracing::warn!(reason = %refusal, "A data query was stopped or not started.");
                ApiError(StatusCode::SERVICE_UNAVAILABLE, refusal.to_string())
            }
            R::Panicked(_) => ApiError::internal(refusal),
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The router.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/companies", post(create_company).get(list_companies))
        .route("/companies/{id}", get(get_company))
        .route("/companies/{id}/dataStatus", get(data_status))
        .route("/companies/{id}/snapshots", get(list_snapshots))
        .route(
            "/companies/{id}/snapshots/published",
            post(snapshot_published),
        )
        .route("/companies/{id}/data/{data_type}", get(list_records))
        .route(
            "/companies/{id}/data/{data_type}/{record_id}",
            get(get_record),
        )
        .route("/companies/{id}/link", post(new_link))
        .route("/companies/{id}/sync", post(request_sync))
        .route("/companies/{id}/devices", get(list_devices))
        .route(
            "/companies/{id}/devices/{device_id}",
            axum::routing::delete(revoke_device),
        )
        .route("/webhooks", post(create_webhook).get(list_webhooks))
        .route("/webhooks/{id}", axum::routing::delete(delete_webhook))
        .route("/webhooks/{id}/deliveries", get(list_deliveries))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ));
    use super::devices;
    use crate::protocol::{CHECKIN, COMMIT, GRANTS, LATEST, RESULT, UPLOAD};
    let at = |what: &str| format!("/companies/{{id}}/connector/{what}");
    let connector = Router::new()
        .route(&at(CHECKIN), post(devices::checkin))
        .route(&at(GRANTS), post(devices::grants))
        .route(
            &format!("/companies/{{id}}/connector/{UPLOAD}/{{token}}"),
            axum::routing::put(devices::upload),
        )
        .route(&at(COMMIT), post(devices::commit))
        .route(&at(LATEST), get(devices::latest))
        .route(&at(RESULT), post(devices::result))
        .layer(axum::extract::DefaultBodyLimit::max(
            16 * 1024 * 1024 * 1024,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            devices::authenticate,
        ));
    use super::link;
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/link/{token}", get(link::link_page))
        .route("/link/{token}/start", post(link::start))
        .route("/link/{token}/code", post(link::enter_code))
        .route("/download", get(link::download))
        .route(crate::protocol::REDEEM_PATH, post(link::redeem))
        .route(crate::protocol::DEVICE_CODE_PATH, post(link::device_code))
        .route(crate::protocol::DEVICE_TOKEN_PATH, post(link::device_token))
        .merge(connector)
        .route(
            "/openapi.json",
            get(|State(state): State<Arc<AppState>>| async move { Json(state.openapi.clone()) }),
        )
        .route("/docs", get(super::docs::page))
        .route("/docs/redoc.standalone.js", get(super::docs::bundle))
        .route("/metrics", get(metrics))
        .merge(api)
        .fallback(|| async {
            ApiError::not_found("no such route: the routes are in /openapi.json")
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            deadline_and_anonymous_limit,
        ))
        .layer(axum::middleware::from_fn(json_errors))
        .layer(axum::middleware::from_fn(no_store_by_default))
        // compressed when the client asks (gzip, br, zstd), with Vary: Accept-Encoding
        .layer(tower_http::compression::CompressionLayer::new())
        .layer(axum::middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

/// Two limits every request meets before its route: a request without an `Authorization`
/// header spends a token of its address's bucket (`--unauthenticated-rate-limit`), and a
/// request must be answered within `--request-timeout-secs` (408). The connector's routes
/// are outside the deadline: an upload of a large snapshot and a long-polling check-in take
/// as long as they take, and need a device credential to start.
async fn deadline_and_anonymous_limit(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    // a request without a key spends its address's bucket, and is told what is left
    let mut quota = None;
    if !request.headers().contains_key(header::AUTHORIZATION) {
        match state.admit_unauthenticated(peer_of(&request)) {
            Ok(q) => quota = q,
            Err(wait) => return state.too_many_unauthenticated(wait),
        }
    }
    let with_quota = |mut response: Response| {
        if let Some(q) = quota {
            q.write(response.headers_mut());
        }
        response
    };
    if request.uri().path().contains("/connector/") {
        return with_quota(next.run(request).await);
    }
    match tokio::time::timeout(state.request_timeout, next.run(request)).await {
        Ok(response) => with_quota(response),
        Err(_) => ApiError(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request was not answered within {} s (a body sent too slowly, or a server too busy): send it again",
                state.request_timeout.as_secs_f64()
            ),
        )
        .into_response(),
    }
}

/// Answers say whether they may be kept: data answers set their own (see [`Caching`]); every
/// other answer is about live state (a company's status, its webhooks) and is not stored.
async fn no_store_by_default(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Every error answer in the JSON error shape. axum's own refusals (a method the route does
/// not take, a body too large or not JSON, a path it cannot read) come as plain text or
/// empty: their words are kept as the message, their headers (`Allow`, …) too. The link
/// pages' HTML errors stay HTML: a person reads them.
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let already = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json") || t.starts_with("text/html"));
    if already {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    } else {
        text
    };
    let mut out = ApiError(status, message).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE
            && name != header::CONTENT_LENGTH
            && !out.headers().contains_key(name)
        {
            out.headers_mut().append(name.clone(), value.clone());
        }
    }
    out
}

/// A query DuckDB refused as it ran: a value the query language let through but DuckDB
/// cannot read or compare is the client's fault (400; DuckDB's words stay in the log, with
/// the SQL they may quote), anything else is the server's.
fn refused(e: duckdb::Error) -> ApiError {
    let text = e.to_string();
    const CLIENT: [&str; 3] = [
        "Conversion Error",
        "Out of Range Error",
        "Invalid Input Error",
    ];
    if CLIENT.iter().any(|kind| text.contains(kind)) {
        tracing::info!(error = %text, "DuckDB refused a value of a query.");
        ApiError::bad(
            "query: a value in it cannot be compared with its field (out of range, or not readable as the field's type)",
        )
    } else {
        ApiError::internal(e)
    }
}

async fn count(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let counter = match response.status().as_u16() {
        200..=299 => &state.metrics.requests_2xx,
        400..=499 => &state.metrics.requests_4xx,
        _ => &state.metrics.requests_5xx,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    response
}

async fn authenticate(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    mut request: Request,
    next: Next,
) -> Response {
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        return ApiError(
            StatusCode::UNAUTHORIZED,
            "send your API key as Authorization: Bearer <key>".into(),
        )
        .into_response();
    };
    let hash = super::control::key_hash(key);
    // Keys are remembered until the control data changes elsewhere (an operator revoked a
    // client or rotated its key): then forgotten at once, before this request is answered.
    let version = match state.control_call(|c| c.version()).await {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let known = {
        let mut known = state.known_keys.lock().unwrap_or_else(|e| e.into_inner());
        if known.0 != version {
            known.0 = version;
            known.1.clear();
        }
        known.1.get(&hash).cloned()
    };
    let mut look_up_quota = None;
    let found = match known {
        Some(client) => Ok(Some(client)),
        None => {
            // a key not seen yet costs a database look-up: its address pays a token for it
            // first, given back when the key is valid
            let peer = peer_of(&request);
            match state.begin_look_up(peer) {
                Ok(quota) => look_up_quota = quota,
                Err(refused) => return *refused,
            }
            let key = key.to_owned();
            let found = state.control_call(move |c| c.client_by_key(&key)).await;
            state.looked_up(peer, matches!(found, Ok(Some(_))));
            found
        }
    };
    let client = match found {
        Ok(Some(client)) => {
            let mut known = state.known_keys.lock().unwrap_or_else(|e| e.into_inner());
            if known.0 == version {
                known.1.insert(hash, client.clone());
            }
            client
        }
        Ok(None) => {
            let mut refusal =
                ApiError(StatusCode::UNAUTHORIZED, "this API key is not valid".into())
                    .into_response();
            if let Some(quota) = look_up_quota {
                quota.write(refusal.headers_mut());
            }
            return refusal;
        }
        Err(e) => return e.into_response(),
    };
    let quota = match state.admit(&client.id) {
        Ok(quota) => quota,
        Err(wait) => {
            let mut response = state.too_many("too many requests for this API key", wait);
            let burst = state.rate_per_sec * 2.0;
            Quota {
                limit: burst.floor() as u64,
                remaining: 0,
                reset: (burst / state.rate_per_sec).ceil() as u64,
                rate: state.rate_per_sec,
                policy: "per-key",
            }
            .write(response.headers_mut());
            return response;
        }
    };
    request.extensions_mut().insert(client);
    let mut response = next.run(request).await;
    quota.write(response.headers_mut());
    response
}

/// The caller's company, or 404 (also for another client's company).
/// Most (client, company) pairs [`owned`] remembers; past it, it starts again.
const OWNED_COMPANIES_KEPT: usize = 100_000;

async fn owned(state: &AppState, client: &Client, id: &str) -> ApiResult<Company> {
    let key = (client.id.clone(), id.to_owned());
    // a company never changes hands and is never deleted: found once, it is known
    let known = state
        .owned_companies
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .cloned();
    let company = match known {
        Some(company) => company,
        None => {
            let (client_id, company_id) = key.clone();
            let company = state
                .control_call(move |c| c.company(&client_id, &company_id))
                .await?
                .ok_or_else(|| ApiError::not_found(format!("company {id} not found")))?;
            let mut owned = state
                .owned_companies
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if owned.len() >= OWNED_COMPANIES_KEPT {
                owned.clear();
            }
            owned.insert(key, company.clone());
            company
        }
    };
    // what it serves after a restart is taken back on its first request
    super::ready(&state.live, id).await;
    state.live.touch(id);
    // a company this node serves nothing of yet (made on another node, or never synced)
    // is looked at now rather than at the next poll; at most once a second
    if state.live.live(id).is_none() {
        let mut asked = state.asked.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if asked
            .get(id)
            .is_none_or(|t| now.duration_since(*t) >= std::time::Duration::from_secs(1))
        {
            asked.insert(id.to_owned(), now);
            state.wake_for(id);
        }
    }
    Ok(company)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewCompany {
    name: Option<String>,
    redirect_url: Option<String>,
}

/// Checks a redirect URL: absolute https, or http to this machine (development).
fn check_redirect(url: &str) -> ApiResult<()> {
    let ok = url.chars().count() <= 2000
        && (url.starts_with("https://")
            || url.starts_with("http://localhost")
            || url.starts_with("http://127.0.0.1")
            || url.starts_with("http://[::1]"))
        && !url.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(
            "field \"redirectUrl\" must be an absolute https:// URL (http:// only for localhost), at most 2000 characters",
        ))
    }
}

/// A new link for a company, as the client sees it.
async fn link_for(state: &AppState, company: &Company) -> ApiResult<Value> {
    let (id, ttl) = (company.id.clone(), state.link_ttl_secs);
    let token = state.control_call(move |c| c.create_link(&id, ttl)).await?;
    let expires = chrono::Utc::now() + chrono::Duration::seconds(state.link_ttl_secs);
    Ok(json!({
        "linkUrl": format!("{}/link/{token}", state.public_url),
        "linkExpiresAt": expires.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    }))
}

/// A company with a fresh link.
async fn with_link(state: &AppState, company: &Company) -> ApiResult<Value> {
    let mut value = serde_json::to_value(company).map_err(ApiError::internal)?;
    let link = link_for(state, company).await?;
    if let (Some(obj), Value::Object(link)) = (value.as_object_mut(), link) {
        obj.extend(link);
    }
    Ok(value)
}

async fn create_company(
    State(state): State<Arc<AppState>>,
    Extension(client): Extension<Client>,
    body: Result<Json<NewCompany>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let Json(body) = body.map_err(|e| {
        ApiError::bad(format!(
            "the body must be JSON like {{\"name\": \"Acme Ltd\"}}: {e}"
        ))
    })?;
    let name = body
        .name
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty() && n.chars().count() <= 200)
        .ok_or_else(|| ApiError::bad("field \"name\" is required: 1 to 200 characters"))?;
    if let Some(url) = &body.redirect_url {
        url_length("redirectUrl", url)?;
        check_redirect(url)?;
    }
    let client_id = client.id.clone();
    let have = state
        .control_call(move |c| c.companies(&client_id))
        .await?
        .len();
    if have >= state.max_companies_per_client {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "this client has {have} companies, the most this server allows one client; ask its operator"
            ),
        ));
    }
    let (client_id, redirect) = (client.id.clone(), body.redirect_url.clone());
    let company = state
        .control_call(move |c| c.create_company(&client_id, &name, redirect.as_deref()))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(with_link(&state, &company).await?),
    ))
}

/// `POST /companies/{id}/link`: a new link (the last one expired or was used).
async fn new_link(
    State(state): State<Arc<AppState>>,
    Extension(client): Extension<Client>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let company = owned(&state, &client, &id).await?;
    Ok((StatusCode::CREATED, Json(link_for(&state, &company).await?)))
}

/// `POST /companies/{id}/sync`: queues a sync; a connector checking in gets it at once.
async fn request_sync(
    State(state): State<Arc<AppState>>,
    Extension(client): Extension<Client>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    owned(&state, &client, &id).await?;
    let company = id.clone();
    let request = state
        .control_call(move |c| c.request_sync(&company))
        .await?;
    state.company_wake(&id).notify_waiters();
    tracing::info!(company = %id, request = %request, "A sync was requested through the API.");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"requestId": request, "status": "queued"})),
    ))
}

/// `GET /companies/{id}/devices`: the connectors linked to a company.
async fn list_devices(
    State(state): State<Arc<AppState>>,
    Extension(client): Extension<Client>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    owned(&state, &client, &id).await?;
    let company = id.clone();
    let devices = state.control_call(move |c| c.devices(&company)).await?;
    Ok(Json(json!({ "results": devices })))
}

/// `DELETE /companies/{id}/devices/{device_id}`: revokes a connector.
async fn revoke_device(
    State(state): State<Arc<AppState>>,
    Extension(client): Extension<Client>,
    Path((id, device_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    owned(&state, &client, &id).await?;
    let (company, device) = (id.clone(), device_id.clone());
    let device = state
        .control_call(move |c| {
            if !c.devices(&company)?.iter().any(|d| d.id == device) {
                return Ok(None);
            }
            c.revoke_device(&device).map(Some)
        })
        .await?
        .ok_or_else(|| ApiError::not_found(format!("device {device_id} not found")))?;
    state.company_wake(&id).notify_waiters();
    tracing::info!(company = %id, device = %device_id, "A connector was revoked by its client.");
    Ok(Json(json!(device)))
}

async fn list_companies(
    State(state): State<Arc<AppState>>,
    Extension(client): Extension<Client>,
) -> ApiResult<Json<Value>> {
    let client_id = client.id.clone();
    let companies = state.control_call(move |c| c.companies(&client_id)).await?;
    Ok(Json(json!({ "results": companies })))
}

async fn get_company(
    State(state): State<Arc<AppState>>,
    Extension(client): Extension<Client>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let company = owned(&state, &client, &id).await?;
    let mut value = serde_json::to_value(&company).map_err(ApiError::internal)?;
    let company_id = id.clone();
    let (devices, last) = state
        .control_call(move |c| Ok((c.devices(&company_id)?, c.last_sync_result(&company_id)?)))
        .await?;
    let connector = devices.iter().find(|d| d.revoked_at.is_none());
    if let Some(obj) = value.as_object_mut() {
        obj.insert("linked".into(), json!(connector.is_some()));
        obj.insert(
            "connector".into(),
            json!(connector.map(|d| json!({
                "deviceId": d.id, "lastSeenAt": d.last_seen_at, "status": d.status,
                "why": super::devices::connector_reason(&devices, state.connector_silence_secs),
            }))),
        );
        obj.insert(
            "lastSyncResult".into(),
            json!(last.map(|r| json!({
                "ok": r.ok, "reason": r.reason, "advice": r.reason.map(|x| x.advice()),
                "message": r.message, "startedAt": r.started_at, "finishedAt": r.finished_at,
                "snapshotId": r.snapshot_id,
            }))),
        );
    }
    Ok(Json(value))
}

async fn data_status(
    State(state): State<Arc<AppState>>,
    Extension(client): Extension<Client>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    owned(&state, &client, &id).await?;
    let live = state.live.live(&id);
    // why the data is not being kept fresh, as the connector says (or its silence says)
    let company_id = id.clone();
    let connector = state
        .control_call(move |c| c.devices(&company_id))
        .await
        .ok()
        .and_then(|d| super::devices::connector_reason(&d, state.connector_silence_secs));
    let mut out = serde_json::Map::new();
    for dt in &state.model.types {
        let status = match &live {
            Some(l) => json!({
                "dataType": dt.name,
                "status": "Fetched",
                "lastSuccessfulSync": l.went_live_at,
                "snapshotId": l.snapshot_id,
                "sourceExtractedAt": l.manifest.source.extracted_at,
                "recordCount": l.records.get(&dt.name).copied().unwrap_or(0),
                "connector": connector,
            }),
            None => json!({
                "dataType": dt.name,
                "status": "NotSynced",
                "lastSuccessfulSync": null,
                "snapshotId": null,
                "sourceExtractedAt": null,
                "recordCount": 0,
                "connector": connector,
            }),
        };
        out.insert(dt.name.clone(), status);
    }
    Ok(Json(Value::Object(out)))
}

async fn list_snapshots(
    State(state): State<Arc<AppState>>,
    Extension(client): Extension<Client>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    owned(&state, &client, &id).await?;
    let company_id = id.clone();
    let snapshots = state
        .control_call(move |c| c.snapshots(&company_id))
        .await?;
    Ok(Json(json!({ "results": snapshots })))
}

async fn snapshot_published(
    State(state): State<Arc<AppState>>,
    Extension(client): Extension<Client>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    owned(&state, &client, &id).await?;
    state.wake_for(&id);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"status": "checking the store now"})),
    ))
}

/// Query-string parameters of a data listing (any other is refused: a misspelt `pagesize`
/// must not be silently ignored).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListParams {
    query: Option<String>,
    order_by: Option<String>,
    page: Option<String>,
    page_size: Option<String>,
    snapshot: Option<String>,
}

/// Query-string parameters of one record.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RecordParams {
    snapshot: Option<String>,
}

fn number(name: &str, value: Option<&str>, default: u64, max: u64) -> ApiResult<u64> {
    let Some(value) = value else {
        return Ok(default);
    };
    value
        .parse::<u64>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| {
            ApiError::bad(format!(
                "{name} must be a whole number from 1 to {max}, not {value:?}"
            ))
        })
}

/// The snapshot a request reads: the live one, or `snapshot=`.
fn snapshot_for(state: &AppState, company: &str, wanted: Option<&str>) -> ApiResult<Arc<Live>> {
    match wanted {
        Some(id) if !crate::snapshot::manifest::is_snapshot_id(id) => Err(ApiError::bad(format!(
            "snapshot must be a snapshot id like 20261129T090501002Z-1a2b3c4d (from GET /companies/{company}/snapshots), not {id:?}"
        ))),
        Some(id) => state.live.snapshot(company, id).ok_or_else(|| {
            ApiError::not_found(format!(
                "snapshot {id} is not loaded: GET /companies/{company}/snapshots lists them (the latest {} are queryable)",
                super::ingest::KEEP_SNAPSHOTS
            ))
        }),
        None => state.live.live(company).ok_or_else(|| {
            if state.live.is_restored(company) {
                ApiError::not_found(format!("company {company} has no data yet: its first sync has not been published"))
            } else {
                // put out of memory (past the budget) since this request began
                ApiError::busy(format!("company {company} is being loaded: retry in a second"))
            }
        }),
    }
}

/// The rows of `dt` in `live` kept in memory to answer from, if they are there (never for
/// the naive peer). The first ask for the snapshot `company` serves now starts reading them.
fn rows_in_memory(
    state: &AppState,
    company: &str,
    live: &Arc<Live>,
    dt: &crate::model::DataType,
) -> Option<Arc<super::served::Served>> {
    if state.naive {
        return None;
    }
    let newest = state
        .live
        .live(company)
        .is_some_and(|now| now.snapshot_id == live.snapshot_id);
    state.served.get(company, live, dt, newest)
}

fn data_type<'a>(state: &'a AppState, name: &str) -> ApiResult<&'a crate::model::DataType> {
    state.model.get(name).ok_or_else(|| {
        let names: Vec<&str> = state.model.types.iter().map(|t| t.name.as_str()).collect();
        ApiError::not_found(format!(
            "unknown data type {name:?}; the data types are {}",
            names.join(", ")
        ))
    })
}

/// The SQL of a served record as JSON text: every model field and `modifiedDate`, money and
/// decimals as exact decimal strings (never through a float), date-times as RFC 3339 UTC.
pub(super) fn record_json(dt: &crate::model::DataType) -> String {
    let mut fields: Vec<String> = dt
        .fields
        .iter()
        .map(|f| format!("{} := {}", quote(&f.name), json_expr(f, &quote(&f.name))))
        .collect();
    fields.push(format!(
        "{} := {}",
        quote(query::MODIFIED_DATE),
        scalar_expr(
            crate::model::FieldType::Datetime,
            &quote(query::MODIFIED_DATE)
        )
    ));
    format!("to_json(struct_pack({}))::VARCHAR", fields.join(", "))
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn scalar_expr(ty: crate::model::FieldType, expr: &str) -> String {
    use crate::model::FieldType as T;
    match ty {
        T::Money | T::Decimal => format!("CAST({expr} AS VARCHAR)"),
        T::Datetime => format!("strftime({expr}, '%Y-%m-%dT%H:%M:%S.%gZ')"),
        _ => expr.to_owned(),
    }
}

/// The SQL giving field `f` (value `expr`) in its served form, nested fields included.
fn json_expr(f: &crate::model::Field, expr: &str) -> String {
    use crate::model::FieldType as T;
    let object = |e: &str| {
        let parts: Vec<String> = f
            .fields
            .iter()
            .map(|sub| {
                format!(
                    "{} := {}",
                    quote(&sub.name),
                    json_expr(sub, &format!("{e}.{}", quote(&sub.name)))
                )
            })
            .collect();
        format!(
            "CASE WHEN {e} IS NULL THEN NULL ELSE struct_pack({}) END",
            parts.join(", ")
        )
    };
    match (f.ty, f.items) {
        (T::Object, _) => object(expr),
        (T::Array, Some(item)) => {
            format!("list_transform({expr}, x -> {})", scalar_expr(item, "x"))
        }
        (T::Array, None) => format!("list_transform({expr}, x -> {})", object("x")),
        (ty, _) => scalar_expr(ty, expr),
    }
}

async fn list_records(
    State(state): State<Arc<AppState>>,
    Extension(client): Extension<Client>,
    Path((id, dt_name)): Path<(String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(params) = params.map_err(|e| ApiError::bad(e.to_string()))?;
    owned(&state, &client, &id).await?;
    let dt = data_type(&state, &dt_name)?.clone();
    let filter = query::parse(&dt, params.query.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::bad(format!("query: {e}")))?;
    let ordering =
        query::Ordering::parse(&dt, params.order_by.as_deref()).map_err(|e| ApiError::bad(e.0))?;
    let order = ordering.sql();
    let page = number("page", params.page.as_deref(), 1, u32::MAX as u64)?;
    let page_size = number(
        "pageSize",
        params.page_size.as_deref(),
        DEFAULT_PAGE_SIZE,
        MAX_PAGE_SIZE,
    )?;
    let live = snapshot_for(&state, &id, params.snapshot.as_deref())?;
    let answered_by = live.snapshot_id.clone();
    let cache = Caching::of(&answered_by, &uri, params.snapshot.is_some());
    if cache.fresh(&headers) {
        return Ok(cache.not_modified());
    }
    let naive = state.naive;
    let answer_key = Answers::key(&answered_by, &uri);
    if let Some(body) = state.answers.get(&answer_key).filter(|_| !naive) {
        return Ok(cache.answer_bytes(body));
    }
    let where_sql = if filter.sql.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", filter.sql)
    };
    let page_size_text = page_size.to_string();
    // (keyed by the company too: snapshot ids are the publisher's, checked only by shape)
    let listing: [&str; 6] = [
        &id,
        &answered_by,
        &dt_name,
        params.query.as_deref().unwrap_or(""),
        params.order_by.as_deref().unwrap_or(""),
        &page_size_text,
    ];
    // where this page begins, when the page before it was just read
    let start = match (naive, page > 1) {
        (false, true) => state.page_starts.get(&listing, page),
        _ => None,
    };
    let (keyset_sql, keyset_params) = match &start {
        Some(after) => ordering.after(after),
        None => (String::new(), Vec::new()),
    };
    let order_value = ordering.value_sql();
    let counted: [&str; 4] = [
        &id,
        &answered_by,
        &dt_name,
        params.query.as_deref().unwrap_or(""),
    ];
    let known_total = match naive {
        false => state.counts.get(&counted, 0),
        true => None,
    };
    let renderer = super::render::Renderer::new(&dt);
    // From the data type's rows in memory when they are there, else from DuckDB.
    let from_memory = match rows_in_memory(&state, &id, &live, &dt) {
        Some(served) => {
            let (filter, ordering, renderer, live) = (
                filter.clone(),
                ordering.clone(),
                renderer.clone(),
                live.clone(),
            );
            let offset = (page - 1) * page_size;
            state
                .limits
                .run_in_memory(&client.id, move || {
                    crate::failpoint::hit("api-page");
                    let _keep = &live;
                    let (total, picked) = served.page(&filter, &ordering, offset, page_size)?;
                    let rows = renderer.columns(served.batch()).and_then(|columns| {
                        picked
                            .into_iter()
                            .map(|row| {
                                let mut json = Vec::with_capacity(2048);
                                renderer.write_row(&columns, row, &mut json).map(|()| json)
                            })
                            .collect::<Result<Vec<_>, String>>()
                    });
                    Some((total, rows))
                })
                .await?
        }
        None => None,
    };
    let (total, rows, last) = match from_memory {
        Some((total, rows)) => {
            state.metrics.from_memory.fetch_add(1, Ordering::Relaxed);
            (total, rows, None)
        }
        None => {
            let (conn, table) = source(naive, &live, &dt.name).map_err(ApiError::internal)?;
            let parts = live.parts_of(&dt.name);
            let (remeasure, company) = (state.live.clone(), id.clone());
            state.limits.run(&client.id, conn, move |conn| -> duckdb::Result<Page> {
        // (a test holds a request here while newer snapshots go live)
        crate::failpoint::hit("api-page");
        let _keep = &live; // the snapshot stays loaded until the answer is read
        let params_ref: Vec<&dyn duckdb::ToSql> = filter.params.iter().map(|p| p as &dyn duckdb::ToSql).collect();
        let offset = (page - 1) * page_size;
        // (pages are picked from the data type's listing table, not its view over parts)
        let table = match naive {
            true => table,
            false => {
                let (listing, built) = live.listing(conn, &dt);
                if built {
                    remeasure.remeasure(&company);
                }
                listing
            }
        };
        // The total is counted only when the page cannot tell it: a page that is not full
        // and not past the end ends the results.
        let total = |got: usize| -> duckdb::Result<u64> {
            if (got as u64) < page_size && (got > 0 || page == 1) {
                return Ok(offset + got as u64);
            }
            if let Some(n) = known_total {
                return Ok(n);
            }
            let n: i64 = conn.query_row(&format!("SELECT count(*) FROM {table} {where_sql}"), params_ref.as_slice(), |r| r.get(0))?;
            Ok(n as u64)
        };
        if naive {
            let record = record_json(&dt);
            let sql = format!("SELECT {record} FROM {table} {where_sql} ORDER BY {order} LIMIT {page_size} OFFSET {offset}");
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map(params_ref.as_slice(), |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
            let rows: Vec<Vec<u8>> = rows.iter().map(|r| compact_json(r).unwrap_or_else(|_| b"null".to_vec())).collect();
            return Ok((total(rows.len())?, Ok(rows), None));
        }
        // The page's rows first (a sort of row numbers only), then the JSON of just those rows:
        // building nested JSON for every matching row would cost far more than the page. From
        // a known page start, only the rows after it are sorted, and none skipped.
        let (page_where, skip) = match (keyset_sql.is_empty(), where_sql.is_empty()) {
            (true, _) => (where_sql.clone(), offset),
            (false, true) => (format!("WHERE {keyset_sql}"), 0),
            (false, false) => (format!("{where_sql} AND {keyset_sql}"), 0),
        };
        let page_params: Vec<&dyn duckdb::ToSql> = filter.params.iter().chain(keyset_params.iter()).map(|p| p as &dyn duckdb::ToSql).collect();
        // (a data type is a view over its parts: each row says its part and its rowid there)
        let (part_no, row_no) = (quote(super::ingest::PART_NO), quote(super::ingest::ROW_NO));
        let record = super::served::columns(&dt);
        let mut stmt = conn.prepare(&format!("SELECT {part_no}, {row_no}, {order_value}, \"id\" FROM {table} {page_where} ORDER BY {order} LIMIT {page_size} OFFSET {skip}"))?;
        let picked: Vec<(i64, i64, Option<String>, String)> = stmt.query_map(page_params.as_slice(), |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?.collect::<Result<_, _>>()?;
        let last = picked.last().map(|(_, _, value, id)| query::After { value: value.clone(), id: id.clone() });
        let rows: Vec<(i64, i64)> = picked.into_iter().map(|(p, r, _, _)| (p, r)).collect();
        let total = total(rows.len())?;
        if rows.is_empty() {
            return Ok((total, Ok(Vec::new()), None));
        }
        // Just those rows, read from their parts by rowid, written as JSON from their columns.
        let mut by_part: std::collections::BTreeMap<i64, Vec<String>> = Default::default();
        for (p, r) in &rows {
            by_part.entry(*p).or_default().push(r.to_string());
        }
        let selects: Vec<String> = by_part
            .iter()
            .filter_map(|(p, rowids)| {
                let part = parts.get(usize::try_from(*p).ok()?)?;
                Some(format!("SELECT {p}::BIGINT AS {part_no}, t.rowid AS {row_no}, {record} FROM {part} t SEMI JOIN (SELECT unnest([{}]) AS r) page ON t.rowid = page.r", rowids.join(",")))
            })
            .collect();
        let mut stmt = conn.prepare(&selects.join(" UNION ALL "))?;
        let mut by_row: HashMap<(i64, i64), Vec<u8>> = HashMap::with_capacity(rows.len());
        for batch in stmt.query_arrow([])? {
            use arrow::array::AsArray;
            let (Some(p), Some(r)) = (batch.column(0).as_primitive_opt::<arrow::datatypes::Int64Type>(), batch.column(1).as_primitive_opt::<arrow::datatypes::Int64Type>()) else {
                return Ok((total, Err(format!("a page's rows came back as {} and {}", batch.column(0).data_type(), batch.column(1).data_type())), None));
            };
            match renderer.write_all(&batch) {
                Ok(written) => by_row.extend(written.into_iter().enumerate().map(|(i, json)| ((p.value(i), r.value(i)), json))),
                Err(e) => return Ok((total, Err(e), None)),
            }
        }
        Ok((total, Ok(rows.iter().filter_map(|k| by_row.remove(k)).collect()), last))
    })
    .await?
    .map_err(refused)?
        }
    };
    let rows = rows.map_err(ApiError::internal)?;
    if let Some(last) = last.filter(|_| rows.len() as u64 == page_size) {
        state.page_starts.put(&listing, page + 1, last);
    }
    if !naive && known_total.is_none() {
        state.counts.put(&counted, 0, total);
    }
    // Every link names the snapshot that answered this page: a walk through the pages reads
    // one snapshot, even when a newer one goes live in the middle of it.
    let base = format!("/companies/{id}/data/{dt_name}");
    let snapshot = Some(answered_by.clone());
    let link = |p: u64| {
        let mut q = format!("{base}?page={p}&pageSize={page_size}");
        for (k, v) in [
            ("query", &params.query),
            ("orderBy", &params.order_by),
            ("snapshot", &snapshot),
        ] {
            if let Some(v) = v {
                q.push_str(&format!("&{k}={}", urlencode(v)));
            }
        }
        json!({ "href": q })
    };
    let mut links = serde_json::Map::new();
    links.insert("self".into(), link(page));
    if page > 1 {
        links.insert("previous".into(), link(page - 1));
    }
    if page * page_size < total {
        links.insert("next".into(), link(page + 1));
    }
    let body = bytes::Bytes::from(page_body(&links, page, page_size, &rows, total));
    if !naive {
        state.answers.put(answer_key, body.clone());
    }
    Ok(cache.answer_bytes(body))
}

/// A page as read: the total, each record's JSON (or why they could not be written), and
/// the last row's place in the ordering (where the next page begins).
type Page = (u64, Result<Vec<Vec<u8>>, String>, Option<query::After>);

/// A page as sent: `_links`, `pageNumber`, `pageSize`, `results` (each record's JSON as
/// written) and `totalResults`, keys in the order serde_json writes an object's.
fn page_body(
    links: &serde_json::Map<String, Value>,
    page: u64,
    page_size: u64,
    rows: &[Vec<u8>],
    total: u64,
) -> Vec<u8> {
    let mut body = Vec::with_capacity(256 + rows.iter().map(|r| r.len() + 1).sum::<usize>());
    body.extend_from_slice(b"{\"_links\":");
    serde_json::to_writer(&mut body, links).expect("writing to a Vec cannot fail");
    body.extend_from_slice(
        format!(",\"pageNumber\":{page},\"pageSize\":{page_size},\"results\":[").as_bytes(),
    );
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(row);
    }
    body.extend_from_slice(format!("],\"totalResults\":{total}}}").as_bytes());
    body
}

/// JSON DuckDB rendered (the naive peer), parsed and written again: compact, keys in
/// serde_json's order, as the server's own writer gives them.
fn compact_json(text: &str) -> Result<Vec<u8>, String> {
    serde_json::from_str::<Value>(text)
        .and_then(|v| serde_json::to_vec(&v))
        .map_err(|e| e.to_string())
}

/// Where a request reads a data type: a connection and a table expression. Normally the
/// snapshot's loaded table; for the naive benchmark peer, its Parquet file read afresh.
fn source(
    naive: bool,
    live: &Live,
    data_type: &str,
) -> duckdb::Result<(duckdb::Connection, String)> {
    if !naive {
        return Ok((live.connection()?, live.table(data_type)));
    }
    let files = live.read_parquet(data_type);
    let stamp = live.went_live_at.trim_end_matches('Z').replace('T', " ");
    Ok((
        duckdb::Connection::open_in_memory()?,
        format!("(SELECT *, TIMESTAMP '{stamp}' AS \"modifiedDate\" FROM {files})"),
    ))
}

/// Where the pages of recent walks begin: for a listing (snapshot, data type, query,
/// ordering, page size) and a page number, the last row of the page before it. A client
/// following `next` links asks for page N+1 right after page N, whose answer recorded where
/// N+1 begins, so the page is read from there (keyset paging: a filter on the ordering and
/// a sort of one page) instead of sorting and skipping every row before it. A page nobody
/// reached yet (a jump, another server node) is read by offset: the same rows, more slowly.
type PageStarts = Remembered<query::After>;

/// How many records a listing (snapshot, data type, query) has: a snapshot never changes, so
/// a listing counted once is not counted again (the pages after the first of a walk, a
/// client polling the same query) until the entry is pushed out by newer ones.
type Counts = Remembered<u64>;

/// Data answers already given, by snapshot and URL: a snapshot never changes, so the same
/// request to the same snapshot has the same answer (its ETag says so too). Asked again, it is
/// sent from here without a query. Keyed by the whole URL (company, data type, record or
/// query, page) and the answering snapshot, compared exactly; the oldest answers go first once
/// they hold their capacity ([`ANSWER_BYTES`], less under a small memory limit). Answers of a snapshot no longer live are no longer asked for
/// (a request names the live snapshot, or an older one explicitly) and age out.
struct Answers(Mutex<AnswersInner>);

impl Default for Answers {
    fn default() -> Self {
        Answers::holding(ANSWER_BYTES)
    }
}

#[derive(Default)]
struct AnswersInner {
    by_key: HashMap<String, bytes::Bytes>,
    order: std::collections::VecDeque<String>,
    bytes: usize,
    /// What it holds at most, in bytes of answers.
    capacity: usize,
    /// Requests answered from here.
    hits: u64,
}

/// What the answers kept hold at most, in bytes, without a memory limit (with one, see
/// [`AppState::keep_answers`]).
pub const ANSWER_BYTES: usize = 64 << 20;
/// Answers larger than this are not kept (a page of 5,000 records).
const ANSWER_MAX: usize = 1 << 20;

impl Answers {
    fn holding(capacity: usize) -> Self {
        Answers(Mutex::new(AnswersInner {
            capacity,
            ..Default::default()
        }))
    }

    fn key(snapshot: &str, uri: &axum::http::Uri) -> String {
        format!("{snapshot}\n{}?{}", uri.path(), uri.query().unwrap_or(""))
    }

    fn get(&self, key: &str) -> Option<bytes::Bytes> {
        let mut inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let found = inner.by_key.get(key).cloned();
        inner.hits += u64::from(found.is_some());
        found
    }

    /// Requests answered from here, and the bytes held.
    fn figures(&self) -> (u64, usize) {
        let inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        (inner.hits, inner.bytes)
    }

    fn put(&self, key: String, body: bytes::Bytes) {
        if body.len() > ANSWER_MAX {
            return;
        }
        let mut inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let size = body.len();
        if inner.by_key.insert(key.clone(), body).is_some() {
            return; // the same answer, put by a request that ran beside the first
        }
        inner.order.push_back(key);
        inner.bytes += size;
        while inner.bytes > inner.capacity {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if let Some(gone) = inner.by_key.remove(&old) {
                inner.bytes -= gone.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Answers;

    #[test]
    fn answers_kept_stay_within_their_bytes_the_oldest_going_first() {
        let answers = Answers::holding(10);
        answers.put("a".into(), bytes::Bytes::from_static(b"123456"));
        answers.put("b".into(), bytes::Bytes::from_static(b"1234"));
        assert!(answers.get("a").is_some() && answers.get("b").is_some());
        answers.put("c".into(), bytes::Bytes::from_static(b"12"));
        assert!(answers.get("a").is_none(), "the oldest goes first");
        assert!(answers.get("b").is_some() && answers.get("c").is_some());
        assert_eq!(answers.figures().1, 6);
    }
}

/// Values remembered by a key of strings and a number (hashed), the oldest going first once
/// [`REMEMBERED`] are held.
struct Remembered<V>(Mutex<(HashMap<u64, V>, std::collections::VecDeque<u64>)>);

impl<V> Default for Remembered<V> {
    fn default() -> Self {
        Remembered(Mutex::default())
    }
}

/// Most values remembered, of each kind.
const REMEMBERED: usize = 20_000;

impl<V: Clone> Remembered<V> {
    fn key(listing: &[&str], page: u64) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        listing.hash(&mut h);
        page.hash(&mut h);
        h.finish()
    }

    fn get(&self, listing: &[&str], page: u64) -> Option<V> {
        let starts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        starts.0.get(&Self::key(listing, page)).cloned()
    }

    fn put(&self, listing: &[&str], page: u64, value: V) {
        let mut starts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let key = Self::key(listing, page);
        if starts.0.insert(key, value).is_none() {
            starts.1.push_back(key);
        }
        while starts.1.len() > REMEMBERED {
            if let Some(old) = starts.1.pop_front() {
                starts.0.remove(&old);
            }
        }
    }
}

/// How a data answer may be cached. Its content is fixed by the snapshot that answers and
/// the request, so its `ETag` is derived from those two: a client polling with
/// `If-None-Match` gets `304 Not Modified` (no query is run) until a new snapshot goes live.
/// The live snapshot can change at any moment, so such answers must be revalidated
/// (`no-cache`); an answer from a named snapshot stays true while it is kept (an hour).
/// Either way the data is one client's: `private`.
struct Caching {
    snapshot: String,
    etag: String,
    named: bool,
}

impl Caching {
    fn of(snapshot: &str, uri: &axum::http::Uri, named: bool) -> Self {
        use sha2::Digest;
        let digest = sha2::Sha256::new()
            .chain_update(snapshot.as_bytes())
            .chain_update(b"\n")
            .chain_update(uri.path().as_bytes())
            .chain_update(b"?")
            .chain_update(uri.query().unwrap_or("").as_bytes())
            .finalize();
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        Caching {
            snapshot: snapshot.to_owned(),
            // weak: the same content may be sent compressed or not
            etag: format!("W/\"{hex}\""),
            named,
        }
    }

    /// Whether the client's `If-None-Match` names this answer (weak comparison).
    fn fresh(&self, headers: &HeaderMap) -> bool {
        let ours = self.etag.trim_start_matches("W/");
        headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim())
            .any(|t| t == "*" || t.trim_start_matches("W/") == ours)
    }

    fn headers(&self, response: &mut Response) {
        let headers = response.headers_mut();
        for (name, value) in [
            ("x-snapshot-id", self.snapshot.as_str()),
            ("etag", self.etag.as_str()),
            (
                "cache-control",
                if self.named {
                    "private, max-age=3600"
                } else {
                    "private, no-cache"
                },
            ),
        ] {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(name, value);
            }
        }
    }

    fn not_modified(&self) -> Response {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        self.headers(&mut response);
        response
    }

    /// An answer already serialised (JSON).
    fn answer_bytes(&self, body: bytes::Bytes) -> Response {
        let mut response = (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response();
        self.headers(&mut response);
        response
    }
}

fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn get_record(
    State(state): State<Arc<AppState>>,
    Extension(client): Extension<Client>,
    Path((id, dt_name, record_id)): Path<(String, String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    params: Result<Query<RecordParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(params) = params.map_err(|e| ApiError::bad(e.to_string()))?;
    owned(&state, &client, &id).await?;
    let dt = data_type(&state, &dt_name)?.clone();
    let live = snapshot_for(&state, &id, params.snapshot.as_deref())?;
    let cache = Caching::of(&live.snapshot_id, &uri, params.snapshot.is_some());
    if cache.fresh(&headers) {
        return Ok(cache.not_modified());
    }
    let naive = state.naive;
    let answer_key = Answers::key(&live.snapshot_id, &uri);
    if let Some(body) = state.answers.get(&answer_key).filter(|_| !naive) {
        return Ok(cache.answer_bytes(body));
    }
    let renderer = super::render::Renderer::new(&dt);
    if let Some(served) = rows_in_memory(&state, &id, &live, &dt) {
        let row = served.row_of(&record_id).ok_or_else(|| {
            ApiError::not_found(format!("{dt_name} record {record_id:?} not found"))
        })?;
        let mut json = Vec::with_capacity(4096);
        renderer
            .write(served.batch(), row, &mut json)
            .map_err(ApiError::internal)?;
        state.metrics.from_memory.fetch_add(1, Ordering::Relaxed);
        let body = bytes::Bytes::from(json);
        state.answers.put(answer_key, body.clone());
        return Ok(cache.answer_bytes(body));
    }
    let record_id_owned = record_id.clone();
    let (conn, table) = source(naive, &live, &dt.name).map_err(ApiError::internal)?;
    // the table of the part that can hold it (a record is only in the part its id gives)
    let table = match naive {
        true => Some(table),
        false => live.part_holding(&dt.name, &record_id),
    };
    let Some(table) = table else {
        return Err(ApiError::not_found(format!(
            "{dt_name} record {record_id:?} not found"
        )));
    };
    let row = state
        .limits
        .run(
            &client.id,
            conn,
            move |conn| -> duckdb::Result<Option<Result<Vec<u8>, String>>> {
                let _keep = &live;
                if naive {
                    let sql = format!("SELECT {} FROM {table} WHERE \"id\" = ?", record_json(&dt));
                    return match conn.query_row(&sql, [&record_id_owned], |r| r.get::<_, String>(0))
                    {
                        Ok(row) => Ok(Some(compact_json(&row))),
                        Err(duckdb::Error::QueryReturnedNoRows) => Ok(None),
                        Err(e) => Err(e),
                    };
                }
                let sql = format!(
                    "SELECT {} FROM {table} WHERE \"id\" = ?",
                    super::served::columns(&dt)
                );
                let mut stmt = conn.prepare(&sql)?;
                for batch in stmt.query_arrow([&record_id_owned])? {
                    if batch.num_rows() > 0 {
                        let mut json = Vec::with_capacity(4096);
                        return Ok(Some(renderer.write(&batch, 0, &mut json).map(|()| json)));
                    }
                }
                Ok(None)
            },
        )
        .await?
        .map_err(ApiError::internal)?;
    let row = row
        .ok_or_else(|| ApiError::not_found(format!("{dt_name} record {record_id:?} not found")))?
        .map_err(ApiError::internal)?;
    let body = bytes::Bytes::from(row);
    if !naive {
        state.answers.put(answer_key, body.clone());
    }
    Ok(cache.answer_bytes(body))
}

/// `/metrics`, for the operator's scraper: off unless the server has a metrics token, and
/// then only for a request that bears it (never an API client's key).
async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let Some(wanted) = state.metrics_token else {
        return ApiError::not_found(
            "metrics are off: start the server with a metrics token (CONNECTOR_METRICS_TOKEN) and send it as Authorization: Bearer <token>",
        )
        .into_response();
    };
    let sent = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| <sha2::Sha256 as sha2::Digest>::digest(t.trim().as_bytes()));
    // hashes compared, so the comparison's time says nothing of the token
    if sent.is_none_or(|sent| sent.as_slice() != wanted) {
        return ApiError(
            StatusCode::UNAUTHORIZED,
            "send the server's metrics token as Authorization: Bearer <token>".into(),
        )
        .into_response();
    }
    let m = &state.metrics;
    let resident = state.live.resident();
    let answers = state.answers.figures();
    let body = format!(
        "# HELP connector_http_requests_total HTTP requests answered, by status class.\n\
         # TYPE connector_http_requests_total counter\n\
         connector_http_requests_total{{class=\"2xx\"}} {}\n\
         connector_http_requests_total{{class=\"4xx\"}} {}\n\
         connector_http_requests_total{{class=\"5xx\"}} {}\n\
         # HELP connector_rate_limited_total Requests refused by a rate limit (per key or per address).\n\
         # TYPE connector_rate_limited_total counter\n\
         connector_rate_limited_total {}\n\
         # HELP connector_snapshots_live_total Snapshots that went live.\n\
         # TYPE connector_snapshots_live_total counter\n\
         connector_snapshots_live_total {}\n\
         # HELP connector_snapshots_failed_total Snapshots refused at ingest.\n\
         # TYPE connector_snapshots_failed_total counter\n\
         connector_snapshots_failed_total {}\n\
         # HELP connector_queries_running Data queries running now, all keys together.\n\
         # TYPE connector_queries_running gauge\n\
         connector_queries_running {}\n\
         # HELP connector_companies_in_memory Companies whose data is in memory now.\n\
         # TYPE connector_companies_in_memory gauge\n\
         connector_companies_in_memory {}\n\
         # HELP connector_memory_resident_bytes What the companies in memory hold (the budget of --memory-limit).\n\
         # TYPE connector_memory_resident_bytes gauge\n\
         connector_memory_resident_bytes {}\n\
         # HELP connector_companies_taken_back_total Companies taken back into memory from their saved state.\n\
         # TYPE connector_companies_taken_back_total counter\n\
         connector_companies_taken_back_total {}\n\
         # HELP connector_parts_loaded_total Parts of data types loaded from their Parquet files at ingest (changed or new parts).\n\
         # TYPE connector_parts_loaded_total counter\n\
         connector_parts_loaded_total {}\n\
         # HELP connector_parts_reused_total Parts of data types an ingest took unchanged from the snapshot before.\n\
         # TYPE connector_parts_reused_total counter\n\
         connector_parts_reused_total {}\n\
         # HELP connector_answers_repeated_total Data requests answered with the answer already given to the same URL of the same snapshot.\n\
         # TYPE connector_answers_repeated_total counter\n\
         connector_answers_repeated_total {}\n\
         # HELP connector_answers_kept_bytes Bytes of answers kept to answer the same request again.\n\
         # TYPE connector_answers_kept_bytes gauge\n\
         connector_answers_kept_bytes {}\n\
         # HELP connector_answers_from_memory_total Data requests answered from rows kept in memory, without a query to DuckDB.\n\
         # TYPE connector_answers_from_memory_total counter\n\
         connector_answers_from_memory_total {}\n\
         # HELP connector_rows_in_memory_bytes Bytes of data types' rows kept in memory to answer from.\n\
         # TYPE connector_rows_in_memory_bytes gauge\n\
         connector_rows_in_memory_bytes {}\n",
        m.requests_2xx.load(Ordering::Relaxed),
        m.requests_4xx.load(Ordering::Relaxed),
        m.requests_5xx.load(Ordering::Relaxed),
        m.rate_limited.load(Ordering::Relaxed),
        m.snapshots_live.load(Ordering::Relaxed),
        m.snapshots_failed.load(Ordering::Relaxed),
        state.limits.running(),
        resident.1,
        resident.0,
        state.live.taken_back.load(Ordering::Relaxed),
        state.live.parts_loaded.load(Ordering::Relaxed),
        state.live.parts_reused.load(Ordering::Relaxed),
        answers.0,
        answers.1,
        m.from_memory.load(Ordering::Relaxed),
        state.served.bytes(),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewWebhook {
    url: Option<String>,
    event_types: Option<Vec<String>>,
}

/// `DELETE /webhooks/{id}`: the subscription, its deliveries and their attempts.
async fn delete_webhook(
    State(state): State<Arc<AppState>>,
    Extension(client): Extension<Client>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let (client_id, hook) = (client.id.clone(), id.clone());
    if state
        .control_call(move |c| c.delete_webhook(&client_id, &hook))
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("webhook {id} not found")))
    }
}

async fn create_webhook(
    State(state): State<Arc<AppState>>,
    Extension(client): Extension<Client>,
    body: Result<Json<NewWebhook>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let Json(body) = body.map_err(|e| ApiError::bad(format!("the body must be JSON like {{\"url\": \"https://…\", \"eventTypes\": [\"data.synced\"]}}: {e}")))?;
    let url = body
        .url
        .ok_or_else(|| ApiError::bad("field \"url\" is required"))?;
    url_length("url", &url)?;
    let types = body.event_types.unwrap_or_else(|| {
        super::webhooks::EVENT_TYPES
            .iter()
            .map(|t| t.to_string())
            .collect()
    });
    if types.is_empty() {
        return Err(ApiError::bad(
            "field \"eventTypes\" must name at least one event type",
        ));
    }
    if let Some(bad) = types
        .iter()
        .find(|t| !super::webhooks::EVENT_TYPES.contains(&t.as_str()))
    {
        return Err(ApiError::bad(format!(
            "eventTypes: unknown event type {bad:?}; the types are {}",
            super::webhooks::EVENT_TYPES.join(", ")
        )));
    }
    if let Some(twice) = types
        .iter()
        .enumerate()
        .find(|(i, t)| types[..*i].contains(t))
        .map(|(_, t)| t)
    {
        return Err(ApiError::bad(format!(
            "eventTypes: {twice:?} is named twice"
        )));
    }
    let client_id = client.id.clone();
    let have = state
        .control_call(move |c| c.webhooks(&client_id))
        .await?
        .len();
    if have >= MAX_WEBHOOKS_PER_CLIENT {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "this client has {have} webhooks, the most one client may have: delete one first (DELETE /webhooks/{{id}})"
            ),
        ));
    }
    state
        .webhook_targets
        .check(&url)
        .await
        .map_err(ApiError::bad)?;
    let (client_id, target) = (client.id.clone(), url.clone());
    let hook = state
        .control_call(move |c| c.create_webhook(&client_id, &target, &types))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": hook.id, "url": hook.url, "eventTypes": hook.event_types, "createdAt": hook.created_at,
            "secret": hook.secret,
        })),
    ))
}

async fn list_webhooks(
    State(state): State<Arc<AppState>>,
    Extension(client): Extension<Client>,
) -> ApiResult<Json<Value>> {
    let client_id = client.id.clone();
    let hooks = state.control_call(move |c| c.webhooks(&client_id)).await?;
    Ok(Json(json!({ "results": hooks })))
}

/// Query parameters of `GET /webhooks/{id}/deliveries`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DeliveryParams {
    page_size: Option<String>,
    after: Option<String>,
}

/// Most deliveries on one page of `GET /webhooks/{id}/deliveries`.
pub const MAX_DELIVERIES_PAGE: u64 = 1000;

/// A webhook's deliveries, newest first, a page at a time: `pageSize` (100 by default) and
/// `after` (the last delivery id of the previous page, as the `next` link gives it).
async fn list_deliveries(
    State(state): State<Arc<AppState>>,
    Extension(client): Extension<Client>,
    Path(id): Path<String>,
    params: Result<Query<DeliveryParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(params) = params.map_err(|e| ApiError::bad(e.to_string()))?;
    let limit = number(
        "pageSize",
        params.page_size.as_deref(),
        DEFAULT_PAGE_SIZE,
        MAX_DELIVERIES_PAGE,
    )? as usize;
    let (client_id, hook, after) = (client.id.clone(), id.clone(), params.after.clone());
    let found = state
        .control_call(move |c| {
            if !c.webhooks(&client_id)?.iter().any(|h| h.id == hook) {
                return Ok(None);
            }
            c.deliveries(&hook, after.as_deref(), limit + 1).map(Some)
        })
        .await?;
    let mut deliveries =
        found.ok_or_else(|| ApiError::not_found(format!("webhook {id} not found")))?;
    let mut links = serde_json::Map::new();
    let here = |after: Option<&str>| {
        let mut href = format!("/webhooks/{id}/deliveries?pageSize={limit}");
        if let Some(after) = after {
            href.push_str(&format!("&after={}", urlencode(after)));
        }
        json!({ "href": href })
    };
    links.insert("self".into(), here(params.after.as_deref()));
    if deliveries.len() > limit {
        deliveries.truncate(limit);
        links.insert(
            "next".into(),
            here(deliveries.last().map(|d| d.id.as_str())),
        );
    }
    Ok(Json(json!({ "results": deliveries, "_links": links })))
}
