//! Publishing through `connector-server`, for desktops that hold no store credentials.
//!
//! Takes a finished snapshot from the outbox and the company's device credential; produces
//! the same published snapshot as [`Store::publish`](super::Store::publish), in three calls
//! (see [`crate::protocol`]): upload grants for the files the store lacks, one PUT per file
//! (a pre-signed store URL, or the server's own upload route), then a commit of the manifest,
//! after which the server has checked every file and advanced `latest` itself.
//!
//! Errors sort as the store's do: the server or store out of reach, 5xx and throttling are
//! [`PublishError::Unreachable`] (the snapshot waits in the outbox); a revoked device, a
//! refused commit or a bad request fail with what the server said.

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{PublishError, Published};
use crate::protocol::{
    COMMIT, Committed, FileToUpload, GRANTS, GrantRequest, Grants, LATEST, Reason, Refusal,
    device_path,
};
use crate::snapshot::SnapshotDir;

/// Where the credential comes from at each call: the agent may rotate it meanwhile.
pub type CredentialSource = Box<dyn Fn() -> Option<String> + Send + Sync>;

/// A server to publish through, for one company.
pub struct ServerPublisher {
    /// The server's base URL.
    pub base: String,
    /// The company.
    pub company_id: String,
    credential: CredentialSource,
    client: reqwest::Client,
    /// How long to keep retrying an unreachable server within one call.
    retry_timeout: Duration,
}

impl std::fmt::Debug for ServerPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerPublisher")
            .field("base", &self.base)
            .finish()
    }
}

impl ServerPublisher {
    /// A publisher for `company_id` at `base`, reading the credential from `credential`.
    pub fn new(
        base: &str,
        company_id: &str,
        credential: CredentialSource,
        retry_timeout: Duration,
    ) -> Self {
        ServerPublisher {
            base: base.trim_end_matches('/').to_owned(),
            company_id: company_id.to_owned(),
            credential,
            client: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .timeout(Duration::from_secs(600))
                .build()
                .expect("an HTTP client can be built"),
            retry_timeout,
        }
    }

    fn url(&self, what: &str) -> String {
        format!("{}{}", self.base, device_path(&self.company_id, what))
    }

    fn unreachable(&self, detail: impl std::fmt::Display) -> PublishError {
        PublishError::Unreachable {
            url: self.base.clone(),
            detail: detail.to_string(),
        }
    }

    fn credential(&self) -> Result<String, PublishError> {
        (self.credential)().ok_or_else(|| PublishError::Server {
            url: self.base.clone(),
            status: 401,
            reason: Some(Reason::DeviceRevoked),
            detail: "this connector holds no device credential for the company: link it from the app's link page".into(),
        })
    }

    /// Sends a request (built afresh for each try), retrying transient failures until the
    /// retry timeout; returns the answer's status and body.
    async fn send(
        &self,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<(u16, bytes::Bytes), PublishError> {
        let started = std::time::Instant::now();
        let mut delay = Duration::from_millis(200);
        loop {
            let credential = self.credential()?;
            let outcome = build(&self.client, &credential).send().await;
            let retry_detail = match outcome {
                Ok(r) if r.status().is_server_error() || r.status().as_u16() == 429 => {
                    format!("the server answered {}", r.status())
                }
                Ok(r) => {
                    let status = r.status().as_u16();
                    let body = r.bytes().await.map_err(|e| self.unreachable(e))?;
                    return Ok((status, body));
                }
                Err(e) => format!("{e}"),
            };
            if started.elapsed() + delay > self.retry_timeout {
                return Err(self.unreachable(retry_detail));
            }
            tracing::debug!(detail = %retry_detail, "The server could not be reached; retrying.");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }

    fn refused(&self, status: u16, body: &[u8]) -> PublishError {
        let refusal: Option<Refusal> = serde_json::from_slice(body).ok();
        PublishError::Server {
            url: self.base.clone(),
            status,
            reason: refusal
                .as_ref()
                .and_then(|r| r.reason.as_deref())
                .and_then(Reason::from_code),
            detail: refusal
                .map(|r| r.error)
                .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(500).collect()),
        }
    }

    /// The company's latest published snapshot id.
    pub async fn latest(&self) -> Result<Option<String>, PublishError> {
        let url = self.url(LATEST);
        let (status, body) = self.send(|c, cred| c.get(&url).bearer_auth(cred)).await?;
        if status != 200 {
            return Err(self.refused(status, &body));
        }
        let value: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| self.unreachable(e))?;
        Ok(value["snapshotId"].as_str().map(str::to_owned))
    }

    /// Publishes one snapshot (the module header says how).
    pub async fn publish(
        &self,
        snap: &SnapshotDir,
        progress: &indicatif::ProgressBar,
    ) -> Result<Published, PublishError> {
        let started = std::time::Instant::now();
        let m = &snap.manifest;
        let request = GrantRequest {
            snapshot_id: m.snapshot_id.clone(),
            files: m
                .files()
                .map(|(_, e)| FileToUpload {
                    key: e.key.clone(),
                    sha256: e.sha256.clone(),
                    bytes: e.bytes,
                })
                .collect(),
        };
        let url = self.url(GRANTS);
        let (status, body) = self
            .send(|c, cred| c.post(&url).bearer_auth(cred).json(&request))
            .await?;
        if status != 200 {
            return Err(self.refused(status, &body));
        }
        let grants: Grants = serde_json::from_slice(&body).map_err(|e| self.unreachable(e))?;
        let mut report = Published {
            snapshot_id: m.snapshot_id.clone(),
            ..Published::default()
        };
        for (name, entry) in m.files() {
            if let Some(upload) = grants.uploads.iter().find(|u| u.key == entry.key) {
                let local = snap.file(name, &entry.part);
                let bytes =
                    tokio::fs::read(&local)
                        .await
                        .map_err(|source| PublishError::Local {
                            doing: "reading",
                            path: local.clone(),
                            source,
                        })?;
                super::check_hash(&local, entry, &Sha256::digest(&bytes))?;
                let bytes = bytes::Bytes::from(bytes);
                let (status, body) = self
                    .send(|c, cred| {
                        let mut req = c.put(&upload.url).body(bytes.clone());
                        for (k, v) in &upload.headers {
                            req = req.header(k, v);
                        }
                        if upload.via_server {
                            req = req.bearer_auth(cred);
                        }
                        req
                    })
                    .await?;
                if !(200..300).contains(&status) {
                    return Err(self.refused(status, &body));
                }
                crate::failpoint::hit("upload");
                report.files_uploaded += 1;
                report.bytes_uploaded += entry.bytes;
                report.changed.push(name.to_owned());
            } else {
                report.files_skipped += 1;
                report.bytes_skipped += entry.bytes;
            }
            progress.inc(entry.bytes);
        }
        report.changed.sort();
        report.changed.dedup();
        let manifest = m.to_json();
        let url = self.url(COMMIT);
        crate::failpoint::hit("manifest-before");
        let (status, body) = self
            .send(|c, cred| {
                c.post(&url)
                    .bearer_auth(cred)
                    .header("content-type", "application/json")
                    .body(manifest.clone())
            })
            .await?;
        if status != 200 {
            return Err(self.refused(status, &body));
        }
        let committed: Committed =
            serde_json::from_slice(&body).map_err(|e| self.unreachable(e))?;
        report.is_latest = committed.is_latest;
        report.bytes_metadata = committed.bytes_metadata;
        report.seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            snapshot = %m.snapshot_id,
            server = %self.base,
            uploaded_files = report.files_uploaded,
            uploaded_bytes = report.bytes_uploaded,
            unchanged_files = report.files_skipped,
            is_latest = report.is_latest,
            "Published the snapshot through the server."
        );
        Ok(report)
    }
}
