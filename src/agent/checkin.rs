//! The agent's side of the conversation with the server (see [`crate::protocol`]): redeeming
//! a link code, the device-code flow, check-in, and reporting a sync's outcome.
//!
//! Every call names what went wrong in a [`CallError`]: the server out of reach (try again
//! later), the device revoked (stop), or a refusal with the server's message.

use std::time::Duration;

use crate::protocol::{
    CHECKIN, CheckIn, CheckInAnswer, DEVICE_CODE_PATH, DEVICE_TOKEN_PATH, DeviceCode,
    DeviceCodeRequest, DeviceTokenRequest, Linked, REDEEM_PATH, RESULT, Reason, RedeemRequest,
    Refusal, SyncResult, device_path,
};

/// Why a call to the server failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The server could not be reached (or answered 5xx): try again later.
    #[error("the server {server} could not be reached: {detail}")]
    Unreachable {
        /// The server.
        server: String,
        /// What happened.
        detail: String,
    },
    /// The device credential was revoked (or is no longer valid).
    #[error("the server {server} says this connector was revoked: {detail}")]
    Revoked {
        /// The server.
        server: String,
        /// What it said.
        detail: String,
    },
    /// The server refused the request.
    #[error("the server refused: {detail} (HTTP {status})")]
    Refused {
        /// HTTP status.
        status: u16,
        /// What it said (for the device-code poll: the RFC 8628 error name).
        detail: String,
    },
}

/// A client of one server.
#[derive(Clone)]
pub struct ServerClient {
    /// The server's base URL.
    pub base: String,
    http: reqwest::Client,
}

impl ServerClient {
    /// A client of `base`.
    pub fn new(base: &str) -> Self {
        ServerClient {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .build()
                .expect("an HTTP client can be built"),
        }
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, CallError> {
        let unreachable = |detail: String| CallError::Unreachable {
            server: self.base.clone(),
            detail,
        };
        let response = request
            .send()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        if (200..300).contains(&status) {
            if body.is_empty() {
                return serde_json::from_slice(b"null").map_err(|e| unreachable(e.to_string()));
            }
            return serde_json::from_slice(&body).map_err(|e| unreachable(e.to_string()));
        }
        if status >= 500 || status == 429 {
            return Err(unreachable(format!("HTTP {status}")));
        }
        let refusal: Option<Refusal> = serde_json::from_slice(&body).ok();
        let detail = refusal
            .as_ref()
            .map(|r| r.error.clone())
            .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(300).collect());
        let reason = refusal
            .and_then(|r| r.reason)
            .and_then(|r| Reason::from_code(&r));
        if status == 401 {
            // Revoked, or a credential the server no longer knows: either way, relink.
            let _ = reason;
            return Err(CallError::Revoked {
                server: self.base.clone(),
                detail,
            });
        }
        Err(CallError::Refused { status, detail })
    }

    /// Redeems a loopback code.
    pub async fn redeem(&self, request: &RedeemRequest) -> Result<Linked, CallError> {
        self.call(
            self.http
                .post(format!("{}{REDEEM_PATH}", self.base))
                .timeout(Duration::from_secs(30))
                .json(request),
        )
        .await
    }

    /// Starts the device-code flow.
    pub async fn device_code(&self, device_name: &str) -> Result<DeviceCode, CallError> {
        self.call(
            self.http
                .post(format!("{}{DEVICE_CODE_PATH}", self.base))
                .timeout(Duration::from_secs(30))
                .json(&DeviceCodeRequest {
                    device_name: device_name.to_owned(),
                }),
        )
        .await
    }

    /// Polls the device-code flow once: `Ok(None)` while the user has not typed the code.
    pub async fn device_token(&self, device_code: &str) -> Result<Option<Linked>, CallError> {
        let answer = self
            .call::<Linked>(
                self.http
                    .post(format!("{}{DEVICE_TOKEN_PATH}", self.base))
                    .timeout(Duration::from_secs(30))
                    .json(&DeviceTokenRequest {
                        device_code: device_code.to_owned(),
                    }),
            )
            .await;
        match answer {
            Ok(linked) => Ok(Some(linked)),
            Err(CallError::Refused { detail, .. }) if detail == "authorization_pending" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Checks in for a company, holding the answer up to `wait` for queued work.
    pub async fn checkin(
        &self,
        company: &str,
        credential: &str,
        status: &CheckIn,
        wait: Duration,
    ) -> Result<CheckInAnswer, CallError> {
        self.call(
            self.http
                .post(format!(
                    "{}{}?wait={}",
                    self.base,
                    device_path(company, CHECKIN),
                    wait.as_secs()
                ))
                .bearer_auth(credential)
                .timeout(wait + Duration::from_secs(20))
                .json(status),
        )
        .await
    }

    /// Reports a sync's outcome.
    pub async fn report(
        &self,
        company: &str,
        credential: &str,
        result: &SyncResult,
    ) -> Result<(), CallError> {
        self.call::<serde_json::Value>(
            self.http
                .post(format!("{}{}", self.base, device_path(company, RESULT)))
                .bearer_auth(credential)
                .timeout(Duration::from_secs(30))
                .json(result),
        )
        .await
        .map(|_| ())
    }
}
