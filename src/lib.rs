//! The Connector: fresh, trustworthy data out of a customer's desktop Sage 50 Accounts.
//!
//! The pipeline, one module per stage (see README.md for the diagram):
//! [`source`] (ODBC to Sage) → [`extract`] (bulk fetch) → [`staging`] (DuckDB store) →
//! [`rules`] (SQL normalisation and checks into the data model) → [`snapshot`] (Parquet files
//! and a manifest) → [`publish`] (object storage); [`sync`] runs them all for one company.
//! [`schema`] holds the source tables as data and [`model`] our data types; [`sim`] is the
//! Sage 50 simulator used by tests, benchmarks and the demo.

pub mod agent;
pub mod extract;
pub mod failpoint;
pub mod files;
pub mod model;
pub mod protocol;
pub mod publish;
pub mod rules;
pub mod schema;
pub mod server;
pub mod sim;
pub mod snapshot;
pub mod source;
pub mod staging;
pub mod state;
pub mod sync;
pub mod telemetry;
pub mod tray;
