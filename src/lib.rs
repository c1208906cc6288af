//! The Connector: fresh, trustworthy data out of a customer's desktop Sage 50 Accounts.
//!
//! The pipeline, one module per stage (see README.md for the diagram):
//! [`source`] (ODBC to Sage) → [`extract`] (bulk fetch) → [`staging`] (DuckDB store).
//! [`schema`] holds the source tables as data; [`sim`] is the Sage 50 simulator used by tests,
//! benchmarks and the demo.

pub mod extract;
pub mod schema;
pub mod sim;
pub mod source;
pub mod staging;
pub mod telemetry;
