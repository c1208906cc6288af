//! The Connector: fresh, trustworthy data out of a customer's desktop Sage 50 Accounts.
//!
//! The pipeline, one module per stage (see README.md for the diagram):
//! [`source`] (ODBC to Sage) → [`extract`] (bulk fetch) → [`staging`] (DuckDB store) →
//! [`rules`] (SQL normalisation and checks into the data model).
//! [`schema`] holds the source tables as data and [`model`] our data types; [`sim`] is the
//! Sage 50 simulator used by tests, benchmarks and the demo.

pub mod extract;
pub mod files;
pub mod model;
pub mod rules;
pub mod schema;
pub mod sim;
pub mod source;
pub mod staging;
pub mod telemetry;
