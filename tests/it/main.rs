//! Integration tests: one binary, a module per area. They run the real binaries against a
//! real SQLite3 ODBC driver (and psqlODBC against a local PostgreSQL for credentials), read
//! the results back from real DuckDB files, and publish to a real local folder and a real
//! S3-compatible server process on loopback (`make test` starts it), read back by pyarrow.

mod agent;
mod api_clients;
mod desktop;
mod doctor;
mod errors;
mod extract;
mod golden;
#[cfg(unix)]
mod kill;
mod link;
mod link_browser;
mod nodes;
mod rules;
mod server;
mod simulator;
mod snapshot;
mod store_credentials;
mod store_faults;
mod support;
#[cfg(feature = "tray")]
mod tray;
mod webdriver;
