//! Integration tests: one binary, a module per area. They run the real binaries against a
//! real SQLite3 ODBC driver (and psqlODBC against a local PostgreSQL for credentials) and read
//! the results back from real DuckDB files.

mod errors;
mod extract;
mod golden;
mod rules;
mod simulator;
mod support;
