//! Webhooks: events for API clients, signed to the Standard Webhooks spec, delivered from a
//! durable outbox.
//!
//! Events (`type` in the body): `data.synced` (a snapshot went live: per data type, records
//! added, modified and deleted), `sync.failed` (a snapshot was refused), and
//! `company.status_changed` (`NotSynced` → `Fetched`, `Fetched` ↔ `Failing`).
//!
//! Each event is written to the control plane's `deliveries` table, one row per subscription,
//! in the same call that decides it; a worker sends what is due. A restart loses nothing: the
//! rows are still there. Headers: `webhook-id` (the same on every retry, for the receiver's
//! deduplication), `webhook-timestamp` (Unix seconds), and `webhook-signature: v1,<base64
//! HMAC-SHA256 of "id.timestamp.body" under the secret>`. A 2xx answer is delivered; anything
//! else is retried after [`BACKOFF_SECS`] (about a day in all), then marked failed. Redirects
//! are not followed. Targets that resolve to loopback, private or link-local addresses are
//! refused unless the server was started with them allowed (tests).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::control::{Attempt, ControlPlane, Delivery, Webhook};

/// The event types.
pub const EVENT_TYPES: [&str; 3] = ["data.synced", "sync.failed", "company.status_changed"];
/// Seconds before each retry; after the last, the delivery is failed (≈ 25 hours in all).
pub const BACKOFF_SECS: [u64; 10] = [5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800, 34200];

/// The Standard Webhooks signature header value for a message.
pub fn sign(secret: &str, msg_id: &str, timestamp: i64, body: &str) -> Result<String, String> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .map_err(|e| format!("the signing secret is not base64: {e}"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(format!("{msg_id}.{timestamp}.{body}").as_bytes());
    Ok(format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// Whether an address is one a webhook may not target by default.
fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 100 && (64..128).contains(&v4.octets()[1]) // CGNAT
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (v6.segments()[0] & 0xffc0) == 0xfe80 // link-local
                || v6.to_ipv4_mapped().is_some_and(|v4| is_internal(IpAddr::V4(v4)))
        }
    }
}

/// Checks a webhook URL: http(s), a host, and (unless allowed) no internal address.
pub async fn check_target(url: &str, allow_internal: bool) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("url {url:?} is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err(format!("url {url:?} must be http:// or https://"));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| format!("url {url:?} has no host"))?;
    let port = parsed.port_or_known_default().unwrap_or(443);
    let addrs: Vec<IpAddr> = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("url {url:?}: its host does not resolve: {e}"))?
        .map(|a| a.ip())
        .collect();
    if addrs.is_empty() {
        return Err(format!("url {url:?}: its host does not resolve"));
    }
    if let Some(ip) = addrs.iter().find(|ip| !allow_internal && is_internal(**ip)) {
        return Err(format!(
            "url {url:?} resolves to {ip}, a loopback, private or link-local address: webhooks must reach a public address"
        ));
    }
    Ok(())
}

/// Sends what is due, forever: every `tick`, and at once when woken.
pub async fn deliver_forever(
    control: Arc<dyn ControlPlane>,
    wake: Arc<tokio::sync::Notify>,
    allow_internal: bool,
    backoff_scale: f64,
) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client can be built");
    loop {
        let now = chrono::Utc::now().timestamp_millis();
        match control.due_deliveries(now, 50) {
            Ok(due) => {
                for (delivery, hook) in due {
                    deliver(
                        &*control,
                        &client,
                        &delivery,
                        &hook,
                        allow_internal,
                        backoff_scale,
                    )
                    .await;
                }
            }
            Err(e) => tracing::error!(error = %e, "Could not read the webhook outbox."),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = wake.notified() => {}
        }
    }
}

async fn deliver(
    control: &dyn ControlPlane,
    client: &reqwest::Client,
    d: &Delivery,
    hook: &Webhook,
    allow_internal: bool,
    backoff_scale: f64,
) {
    let timestamp = chrono::Utc::now().timestamp();
    let outcome: Result<u16, (Option<u16>, String)> = async {
        check_target(&hook.url, allow_internal)
            .await
            .map_err(|e| (None, e))?;
        let signature = sign(&hook.secret, &d.id, timestamp, &d.payload).map_err(|e| (None, e))?;
        let response = client
            .post(&hook.url)
            .header("content-type", "application/json")
            .header("webhook-id", &d.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(d.payload.clone())
            .send()
            .await
            .map_err(|e| (None, format!("could not reach {}: {e}", hook.url)))?;
        let status = response.status().as_u16();
        if response.status().is_success() {
            Ok(status)
        } else {
            Err((Some(status), format!("the receiver answered {status}")))
        }
    }
    .await;
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let (attempt, delivered, next) = match outcome {
        Ok(status) => (
            Attempt {
                at,
                status_code: Some(status),
                error: None,
            },
            true,
            None,
        ),
        Err((status_code, error)) => {
            let next = BACKOFF_SECS.get(d.attempts as usize).map(|secs| {
                chrono::Utc::now().timestamp_millis()
                    + (*secs as f64 * 1000.0 * backoff_scale) as i64
            });
            if next.is_none() {
                tracing::warn!(delivery = %d.id, webhook = %hook.id, "A webhook delivery failed for good after every retry.");
            }
            (
                Attempt {
                    at,
                    status_code,
                    error: Some(error),
                },
                false,
                next,
            )
        }
    };
    if let Err(e) = control.record_attempt(&d.id, &attempt, delivered, next) {
        tracing::error!(error = %e, "Could not record a webhook attempt.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_standard_webhooks_test_vector() {
        // From the Standard Webhooks specification's reference implementations.
        let sig = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn internal_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.4",
            "169.254.169.254",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "100.64.0.1",
            "0.0.0.0",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:4700::1111"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }
}
