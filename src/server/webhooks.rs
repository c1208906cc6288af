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
//! are not followed. Only global unicast addresses are reached (unless the server was started
//! with internal ones allowed, for tests), and a host is resolved once per connection, by
//! [`Targets`], which checks the very addresses the connection then uses.

use std::net::{IpAddr, SocketAddr};
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

/// Whether an address is global unicast: the only kind a webhook may reach by default.
/// Everything else is refused: loopback, private, shared (CGNAT), link-local, documentation,
/// benchmarking (`198.18.0.0/15`), reserved (`240.0.0.0/4`, `0.0.0.0/8`), multicast and
/// broadcast; in IPv6 anything outside `2000::/3`, and inside it the ranges that lead to IPv4
/// or to nowhere (6to4 `2002::/16`, the `2001::/23` protocol block with Teredo, documentation).
/// NAT64 (`64:ff9b::/96`), IPv4-mapped and IPv4-compatible addresses are outside `2000::/3`.
fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(a == 0
                || a == 10
                || a == 127
                || a >= 224 // multicast, reserved, broadcast
                || a == 100 && (64..128).contains(&b) // shared address space (CGNAT)
                || a == 169 && b == 254
                || a == 172 && (16..32).contains(&b)
                || a == 192 && b == 168
                || a == 192 && b == 0 && (c == 0 || c == 2) // protocol assignments, TEST-NET-1
                || a == 192 && b == 88 && c == 99 // 6to4 relay anycast
                || a == 198 && (18..20).contains(&b) // benchmarking
                || a == 198 && b == 51 && c == 100 // TEST-NET-2
                || a == 203 && b == 0 && c == 113) // TEST-NET-3
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            (s[0] & 0xe000) == 0x2000
                && s[0] != 0x2002
                && !(s[0] == 0x2001 && s[1] < 0x0200)
                && !(s[0] == 0x2001 && s[1] == 0x0db8)
                && (s[0] & 0xfff0) != 0x3ff0 // documentation, 3fff::/20
        }
    }
}

/// Where webhooks may go and how their hosts are looked up.
///
/// A host name is resolved once per connection, by this resolver, and the connection goes to
/// exactly the addresses that were checked: a DNS answer that changes between a check and the
/// connection (rebinding) cannot reach an internal address. Proxies are used only when named
/// (`--webhook-proxy`), never from `HTTP(S)_PROXY`; a look-up that takes longer than
/// [`DNS_TIMEOUT`] fails.
pub struct Targets {
    lookup: Lookup,
    proxy: Option<String>,
}

/// The look-up and the check of every address it gives: what the delivery client resolves
/// host names with (cloned per look-up; the resolver is shared inside).
#[derive(Clone)]
struct Lookup {
    resolver: Result<hickory_resolver::TokioResolver, String>,
    allow_internal: bool,
}

/// The longest a webhook host's look-up may take.
pub const DNS_TIMEOUT: Duration = Duration::from_secs(5);

impl Targets {
    /// Targets looked up through `dns_server` (for example a resolver of the operator's own),
    /// else through the system's DNS configuration. A configuration that cannot be read is
    /// reported on each delivery, naming `--webhook-dns`.
    pub fn new(
        dns_server: Option<SocketAddr>,
        allow_internal: bool,
        proxy: Option<String>,
    ) -> Self {
        use hickory_resolver::config::{NameServerConfig, ResolverConfig};
        use hickory_resolver::net::runtime::TokioRuntimeProvider;
        let builder = match dns_server {
            Some(addr) => {
                let mut server = NameServerConfig::udp(addr.ip());
                for connection in &mut server.connections {
                    connection.port = addr.port();
                }
                Ok(hickory_resolver::TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![server]),
                    TokioRuntimeProvider::default(),
                ))
            }
            None => hickory_resolver::TokioResolver::builder_tokio().map_err(|e| {
                format!("the system's DNS configuration cannot be read ({e}): name a DNS server with --webhook-dns")
            }),
        };
        let resolver = builder.and_then(|mut b| {
            let options = b.options_mut();
            options.timeout = Duration::from_secs(2);
            options.attempts = 2;
            b.build()
                .map_err(|e| format!("the DNS resolver cannot start: {e}"))
        });
        if let Err(e) = &resolver {
            tracing::warn!(error = %e, "Webhook hosts cannot be looked up.");
        }
        Targets {
            lookup: Lookup {
                resolver,
                allow_internal,
            },
            proxy,
        }
    }

    /// The addresses of `host`, every one of them checked; an IP literal is checked as it is.
    pub async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        self.lookup.resolve(host).await
    }

    /// Checks a webhook URL: http(s), a host, and (unless allowed) only public addresses.
    pub async fn check(&self, url: &str) -> Result<(), String> {
        let parsed =
            reqwest::Url::parse(url).map_err(|e| format!("url {url:?} is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "https" | "http") {
            return Err(format!("url {url:?} must be http:// or https://"));
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| format!("url {url:?} has no host"))?;
        self.resolve(host)
            .await
            .map(drop)
            .map_err(|e| format!("url {url:?}: {e}"))
    }

    /// The HTTP client deliveries use: this resolver, no redirects, no proxy unless named.
    fn client(&self) -> Result<reqwest::Client, String> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .dns_resolver(Arc::new(self.lookup.clone()))
            .no_proxy();
        if let Some(proxy) = &self.proxy {
            builder = builder.proxy(
                reqwest::Proxy::all(proxy)
                    .map_err(|e| format!("--webhook-proxy {proxy:?} is not a proxy URL: {e}"))?,
            );
        }
        builder
            .build()
            .map_err(|e| format!("the webhook HTTP client cannot be built: {e}"))
    }
}

impl Lookup {
    fn check_ip(&self, shown: &str, ip: IpAddr) -> Result<(), String> {
        if self.allow_internal || is_global(ip) {
            Ok(())
        } else {
            Err(format!(
                "{shown} resolves to {ip}, which is not a public (global unicast) address: webhooks must reach a public address"
            ))
        }
    }

    /// The addresses of `host`, every one of them checked; an IP literal is checked as it is.
    pub async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        let host = host.trim_matches(['[', ']']);
        if let Ok(ip) = host.parse::<IpAddr>() {
            self.check_ip(host, ip)?;
            return Ok(vec![ip]);
        }
        let resolver = self.resolver.as_ref().map_err(Clone::clone)?;
        let found = tokio::time::timeout(DNS_TIMEOUT, resolver.lookup_ip(host))
            .await
            .map_err(|_| {
                format!(
                    "looking up {host} took longer than {} s",
                    DNS_TIMEOUT.as_secs()
                )
            })?
            .map_err(|e| format!("{host} does not resolve: {e}"))?;
        let addrs: Vec<IpAddr> = found.iter().collect();
        if addrs.is_empty() {
            return Err(format!("{host} does not resolve"));
        }
        for ip in &addrs {
            self.check_ip(host, *ip)?;
        }
        Ok(addrs)
    }
}

impl reqwest::dns::Resolve for Lookup {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        // the future outlives this call: it owns a clone
        let (host, lookup) = (name.as_str().to_owned(), self.clone());
        Box::pin(async move {
            let addrs = lookup.resolve(&host).await?;
            let iter: reqwest::dns::Addrs =
                Box::new(addrs.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(iter)
        })
    }
}

/// Most deliveries being sent at once, in all.
pub const MAX_IN_FLIGHT: usize = 64;
/// Most deliveries of one webhook being sent at once: a slow or dead receiver holds up only
/// its own events.
pub const PER_WEBHOOK: usize = 4;
/// How often deliveries older than the retention period are deleted.
const PURGE_EVERY: Duration = Duration::from_secs(3600);

/// Sends what is due, forever: every 200 ms, and at once when woken. Each delivery is sent
/// by a task of its own, at most [`PER_WEBHOOK`] per webhook and [`MAX_IN_FLIGHT`] in all;
/// the control plane is called on blocking threads. Deliveries made more than `retention`
/// ago that are no longer pending are deleted (at start, then hourly).
pub async fn deliver_forever(
    control: Arc<dyn ControlPlane>,
    wake: Arc<tokio::sync::Notify>,
    targets: Arc<Targets>,
    backoff_scale: f64,
    retention: Duration,
    lease_ms: i64,
) {
    let client = match targets.client() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "Webhooks cannot be delivered.");
            return;
        }
    };
    let mut in_flight = std::collections::HashSet::new();
    // Deliveries whose tasks ended; taken out of `in_flight` only before the next look at
    // the outbox, so that a look taken while one was ending cannot send it twice.
    let finished: Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let mut last_purge: Option<std::time::Instant> = None;
    loop {
        for id in std::mem::take(&mut *finished.lock().unwrap_or_else(|e| e.into_inner())) {
            in_flight.remove(&id);
        }
        if last_purge.is_none_or(|t| t.elapsed() >= PURGE_EVERY) {
            last_purge = Some(std::time::Instant::now());
            let before = (chrono::Utc::now()
                - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let c = control.clone();
            match tokio::task::spawn_blocking(move || c.purge_deliveries(&before)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::info!(
                    deliveries = n,
                    "Deleted webhook deliveries past their retention period."
                ),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "Could not delete old webhook deliveries.")
                }
                Err(e) => tracing::error!(error = %e, "Could not delete old webhook deliveries."),
            }
        }
        let now = chrono::Utc::now().timestamp_millis();
        let c = control.clone();
        // Only as many as can be sent now (those in flight may come back from a control
        // plane that holds none: they are skipped): a shared one holds each it hands out.
        let limit = if in_flight.len() >= MAX_IN_FLIGHT {
            0
        } else {
            MAX_IN_FLIGHT
        };
        match tokio::task::spawn_blocking(move || {
            if limit == 0 {
                return Ok(Vec::new());
            }
            c.due_deliveries(now, PER_WEBHOOK, limit, lease_ms)
        })
        .await
        {
            Ok(Ok(due)) => {
                for (delivery, hook) in due {
                    if in_flight.len() >= MAX_IN_FLIGHT {
                        break;
                    }
                    if !in_flight.insert(delivery.id.clone()) {
                        continue;
                    }
                    let (control, client, targets, finished, wake) = (
                        control.clone(),
                        client.clone(),
                        targets.clone(),
                        finished.clone(),
                        wake.clone(),
                    );
                    tokio::spawn(async move {
                        deliver(&control, &client, &targets, &delivery, &hook, backoff_scale).await;
                        finished
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(delivery.id);
                        wake.notify_one();
                    });
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "Could not read the webhook outbox."),
            Err(e) => tracing::error!(error = %e, "Could not read the webhook outbox."),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = wake.notified() => {}
        }
    }
}

async fn deliver(
    control: &Arc<dyn ControlPlane>,
    client: &reqwest::Client,
    targets: &Targets,
    d: &Delivery,
    hook: &Webhook,
    backoff_scale: f64,
) {
    let timestamp = chrono::Utc::now().timestamp();
    let outcome: Result<u16, (Option<u16>, String)> = async {
        // The scheme and an IP literal are checked here; a host name is looked up and
        // checked by the client's resolver, once, for the connection it makes.
        let literal = reqwest::Url::parse(&hook.url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .filter(|h| h.trim_matches(['[', ']']).parse::<IpAddr>().is_ok());
        if literal.is_some() {
            targets.check(&hook.url).await.map_err(|e| (None, e))?;
        }
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
            .map_err(|e| (None, describe_send_error(&hook.url, &e)))?;
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
    let (c, id) = (control.clone(), d.id.clone());
    match tokio::task::spawn_blocking(move || c.record_attempt(&id, &attempt, delivered, next))
        .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "Could not record a webhook attempt."),
        Err(e) => tracing::error!(error = %e, "Could not record a webhook attempt."),
    }
}

/// A failed send, with the cause that says why (the resolver's refusal, a refused connection).
fn describe_send_error(url: &str, e: &reqwest::Error) -> String {
    let mut text = format!("could not reach {url}");
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut last = None;
    while let Some(s) = source {
        last = Some(s.to_string());
        source = s.source();
    }
    if let Some(cause) = last {
        text.push_str(": ");
        text.push_str(&cause);
    }
    text
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
    fn only_global_unicast_addresses_are_reachable() {
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
            "0.1.2.3",
            "198.18.0.1",
            "198.19.255.255",
            "240.0.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "239.1.2.3",
            "192.0.2.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::1",
            "::127.0.0.1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
            "::",
        ] {
            assert!(!is_global(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "2a00:1450::1",
        ] {
            assert!(is_global(ip.parse().unwrap()), "{ip}");
        }
    }
}
