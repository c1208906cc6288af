//! The errors of the extract stage: what a Sage user meets, classified and explained.

use std::path::PathBuf;

/// Why an extraction failed. Every message says what to change; none contains credentials.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExtractError {
    /// The data folder in the connection string does not exist (moved data, unmapped drive).
    #[error(
        "Sage data folder not found: {path}. Check the data path (in Sage: Help > About > Data \
         Directory) and prefer a UNC path (\\\\server\\share\\...) to a mapped drive letter"
    )]
    DataFolderNotFound {
        /// The folder or file that is missing.
        path: PathBuf,
    },
    /// The ODBC driver named in the connection string is not installed.
    #[error(
        "ODBC driver '{driver}' is not installed (or not registered for this {bits}-bit process). \
         Install the Sage 50 ODBC driver of the same version as Sage, or fix Driver= in the \
         connection string; the driver manager said: {detail}"
    )]
    DriverNotInstalled {
        /// The driver name from the connection string.
        driver: String,
        /// Process bitness, since Sage's older drivers are 32-bit only.
        bits: usize,
        /// The driver manager's message.
        detail: String,
    },
    /// The Sage user name or password was refused.
    #[error(
        "Sage rejected the credentials of user '{user}'. Check the user name and the password \
         (passed through --password-env); the driver said: {detail}"
    )]
    CredentialsRejected {
        /// The user name (never the password).
        user: String,
        /// The driver's message, with secrets removed.
        detail: String,
    },
    /// The company data is locked by another program or user.
    #[error(
        "the Sage data is locked or in use by another program or user ({detail}). Close Sage \
         on this PC, or use a dedicated Sage user for the connector, then try again"
    )]
    DatasetLocked {
        /// The driver's message.
        detail: String,
    },
    /// The password environment variable named by --password-env is not set.
    #[error(
        "environment variable {var} (named by --password-env) is not set: set it to the Sage password"
    )]
    PasswordEnvMissing {
        /// The variable.
        var: String,
    },
    /// A required table is absent from the source (older Sage version or wrong data).
    #[error(
        "table {table} is missing from the Sage data: this Sage version is not supported, or \
         the connection string points at something other than a Sage company"
    )]
    TableMissing {
        /// The table.
        table: String,
    },
    /// A required column is absent from a table.
    #[error(
        "table {table} has no column {column}, which the connector requires (schemas/sage50-source.toml)"
    )]
    ColumnMissing {
        /// The table.
        table: String,
        /// The column.
        column: String,
    },
    /// A column reports a type the connector cannot read as expected.
    #[error(
        "table {table} column {column}: the driver reports {found}, expected {expected} (schemas/sage50-source.toml)"
    )]
    ColumnType {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// Expected type family.
        expected: String,
        /// What the driver reported.
        found: String,
    },
    /// Reading a table's rows failed part way.
    #[error("reading table {table} failed after {rows_before} rows{}: {detail}", column.as_ref().map(|c| format!(" at column {c}")).unwrap_or_default())]
    Fetch {
        /// The table.
        table: String,
        /// The column at fault, when the driver says.
        column: Option<String>,
        /// Rows of the table already read; the bad row is among the next batch.
        rows_before: u64,
        /// The driver's message.
        detail: String,
    },
    /// A setting of the connector's own in the connection string is wrong.
    #[error("{detail}")]
    Setting {
        /// What is wrong and what is accepted.
        detail: String,
    },
    /// Connecting failed for another reason.
    #[error("cannot connect to the Sage data: {detail}")]
    Connect {
        /// The driver's message, with secrets removed.
        detail: String,
    },
    /// The DuckDB staging store could not be written.
    #[error("staging store {path}: {detail}")]
    Staging {
        /// The staging file.
        path: PathBuf,
        /// DuckDB's or the file system's message.
        detail: String,
    },
}

impl ExtractError {
    /// The reason code of this failure (see [`crate::protocol::Reason`]).
    pub fn reason(&self) -> crate::protocol::Reason {
        use crate::protocol::Reason as R;
        match self {
            ExtractError::DataFolderNotFound { .. } => R::DataFolderNotFound,
            ExtractError::DriverNotInstalled { .. } => R::DriverMissing,
            ExtractError::CredentialsRejected { .. } | ExtractError::PasswordEnvMissing { .. } => {
                R::CredentialsRejected
            }
            ExtractError::DatasetLocked { .. } => R::CompanyLocked,
            ExtractError::TableMissing { .. }
            | ExtractError::ColumnMissing { .. }
            | ExtractError::ColumnType { .. } => R::SageSchema,
            ExtractError::Fetch { .. } => R::SageData,
            ExtractError::Connect { .. } | ExtractError::Setting { .. } => R::Other,
            ExtractError::Staging { .. } => R::LocalStorage,
        }
    }
}
