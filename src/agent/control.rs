//! The agent's loopback listener as its own desktop processes reach it (the tray's menu,
//! `connector doctor`): the port and ticket the running agent wrote to
//! `STATE/agent/settings-url` (a file only this user can read), and plain HTTP/1.1 on
//! 127.0.0.1 with the `Host` the listener accepts.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use super::config::agent_dir;
use super::local_web::TICKET_HEADER;

/// The running agent's listener.
pub struct Control {
    /// The settings page's address (opens a session).
    pub settings_url: String,
    port: u16,
    ticket: String,
}

impl Control {
    /// Reads `settings-url` (None: the agent has not started yet).
    pub fn find(state_dir: &Path) -> Option<Control> {
        let url = std::fs::read_to_string(agent_dir(state_dir).join("settings-url")).ok()?;
        let url = url.trim().to_owned();
        let rest = url.strip_prefix("http://127.0.0.1:")?;
        let (port, rest) = rest.split_once('/')?;
        let ticket = rest.split_once("ticket=")?.1.to_owned();
        Some(Control {
            port: port.parse().ok()?,
            ticket,
            settings_url: url,
        })
    }

    /// The listener's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// One request (`METHOD PATH`, extra header lines, body) and the whole answer.
    fn exchange(
        &self,
        request_line: &str,
        headers: &str,
        body: &str,
        timeout: Duration,
    ) -> std::io::Result<String> {
        let mut stream = std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], self.port)),
            timeout,
        )?;
        stream.set_read_timeout(Some(timeout))?;
        write!(
            stream,
            "{request_line} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        )?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    }

    /// Whether the agent answers on its port.
    pub fn alive(&self) -> bool {
        self.exchange("GET /alive", "", "", Duration::from_secs(2))
            .is_ok_and(|a| a.starts_with("HTTP/1.1 200") && a.contains("sage-connector"))
    }

    /// POSTs `body` to the agent's `path` with the ticket; returns the HTTP status.
    pub fn post(&self, path: &str, body: &serde_json::Value) -> std::io::Result<u16> {
        let headers = format!(
            "{TICKET_HEADER}: {}\r\nContent-Type: application/json\r\n",
            self.ticket
        );
        let answer = self.exchange(
            &format!("POST {path}"),
            &headers,
            &body.to_string(),
            Duration::from_secs(10),
        )?;
        answer
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other("the connector gave no HTTP answer"))
    }
}
