//! The Sage 50 source schema: which tables and columns the connector reads, as data.
//!
//! Takes `schemas/sage50-source.toml` (compiled in; a different file can be loaded for tests)
//! and produces a validated [`SourceSchema`]. Guarantees: every table has at least one column,
//! names are unique, and every type is one the extractor and the simulator both understand.

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;

/// The embedded copy of `schemas/sage50-source.toml`.
pub const EMBEDDED_SOURCE_SCHEMA: &str = include_str!("../schemas/sage50-source.toml");

/// Errors in a source schema file.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The file could not be read.
    #[error("cannot read source schema file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("source schema {origin} is malformed: {message}")]
    Parse {
        /// Where the schema came from.
        origin: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The file parsed but breaks a rule.
    #[error("source schema {origin}: {message}")]
    Invalid {
        /// Where the schema came from.
        origin: String,
        /// What is wrong, naming table and column.
        message: String,
    },
}

/// A column type as Sage's ODBC driver reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ColumnType {
    /// 32-bit integer.
    Integer,
    /// 16-bit integer (flags, small codes).
    Smallint,
    /// Floating point: how Sage reports every amount.
    Double,
    /// Calendar date.
    Date,
    /// Date and time.
    Timestamp,
    /// Text of at most `length` characters.
    Varchar,
}

impl ColumnType {
    /// The SQL type name used in DDL (the simulator's tables).
    pub fn sql_name(self) -> &'static str {
        match self {
            ColumnType::Integer => "INTEGER",
            ColumnType::Smallint => "SMALLINT",
            ColumnType::Double => "DOUBLE",
            ColumnType::Date => "DATE",
            ColumnType::Timestamp => "TIMESTAMP",
            ColumnType::Varchar => "VARCHAR",
        }
    }
}

/// One expected column.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    /// Column name exactly as Sage spells it.
    pub name: String,
    /// Expected type.
    #[serde(rename = "type")]
    pub ty: ColumnType,
    /// Maximum length, for VARCHAR.
    #[serde(default)]
    pub length: Option<u32>,
    /// Whether extraction fails when the source lacks this column.
    #[serde(default = "yes")]
    pub required: bool,
}

impl Column {
    /// DDL type including the length, e.g. `VARCHAR(60)`.
    pub fn ddl_type(&self) -> String {
        match (self.ty, self.length) {
            (ColumnType::Varchar, Some(n)) => format!("VARCHAR({n})"),
            (ty, _) => ty.sql_name().to_owned(),
        }
    }
}

/// One expected table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Table {
    /// Table name exactly as Sage spells it.
    pub name: String,
    /// Whether extraction fails when the source lacks this table (older Sage versions).
    #[serde(default = "yes")]
    pub required: bool,
    /// The columns that identify a row.
    pub key: Vec<String>,
    /// Expected columns in extraction order.
    pub columns: Vec<Column>,
}

impl Table {
    /// `CREATE TABLE` for this table with every expected column, named `prefix` + the Sage
    /// name (e.g. `sage.` for the rules' empty stand-ins); the simulator makes its tables
    /// with it too.
    pub fn create_sql(&self, prefix: &str) -> String {
        let cols: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("{} {}", crate::staging::ident(&c.name), c.ddl_type()))
            .collect();
        format!(
            "CREATE TABLE {prefix}{} ({})",
            crate::staging::ident(&self.name),
            cols.join(", ")
        )
    }

    /// The column with this name, if expected.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
    }
}

fn yes() -> bool {
    true
}

/// The validated list of source tables.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSchema {
    /// Tables in extraction order.
    #[serde(rename = "table")]
    pub tables: Vec<Table>,
}

impl SourceSchema {
    /// The schema compiled into the binary.
    pub fn embedded() -> Self {
        Self::parse(
            EMBEDDED_SOURCE_SCHEMA,
            "schemas/sage50-source.toml (embedded)",
        )
        .expect("the embedded source schema is validated by the test suite")
    }

    /// Reads and validates a schema file.
    pub fn load(path: &Path) -> Result<Self, SchemaError> {
        let text = std::fs::read_to_string(path).map_err(|source| SchemaError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates schema text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, SchemaError> {
        let schema: SourceSchema = toml::from_str(text).map_err(|e| SchemaError::Parse {
            origin: origin.to_owned(),
            message: e.to_string(),
        })?;
        let invalid = |message: String| SchemaError::Invalid {
            origin: origin.to_owned(),
            message,
        };
        let mut tables = HashSet::new();
        for table in &schema.tables {
            if !tables.insert(table.name.to_ascii_uppercase()) {
                return Err(invalid(format!("table {} is listed twice", table.name)));
            }
            if table.columns.is_empty() {
                return Err(invalid(format!("table {} has no columns", table.name)));
            }
            let mut columns = HashSet::new();
            for column in &table.columns {
                if !columns.insert(column.name.to_ascii_uppercase()) {
                    return Err(invalid(format!(
                        "table {} lists column {} twice",
                        table.name, column.name
                    )));
                }
                if column.ty == ColumnType::Varchar && column.length.is_none() {
                    return Err(invalid(format!(
                        "table {} column {}: VARCHAR needs a length",
                        table.name, column.name
                    )));
                }
            }
            for key in &table.key {
                if table.column(key).is_none() {
                    return Err(invalid(format!(
                        "table {} key column {key} is not among its columns",
                        table.name
                    )));
                }
            }
        }
        Ok(schema)
    }

    /// The table with this name.
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_schema_is_valid_and_lists_the_core_tables() {
        let schema = SourceSchema::embedded();
        for name in [
            "AUDIT_HEADER",
            "AUDIT_SPLIT",
            "AUDIT_JOURNAL",
            "NOMINAL_LEDGER",
        ] {
            assert!(schema.table(name).is_some_and(|t| t.required), "{name}");
        }
    }

    #[test]
    fn duplicate_column_is_rejected_naming_table_and_column() {
        let text = r#"
            [[table]]
            name = "T"
            key = ["A"]
            columns = [{ name = "A", type = "INTEGER" }, { name = "a", type = "DOUBLE" }]
        "#;
        let err = SourceSchema::parse(text, "test").unwrap_err().to_string();
        assert!(err.contains("table T lists column a twice"), "{err}");
    }

    #[test]
    fn varchar_without_length_is_rejected() {
        let text = r#"
            [[table]]
            name = "T"
            key = ["A"]
            columns = [{ name = "A", type = "VARCHAR" }]
        "#;
        let err = SourceSchema::parse(text, "test").unwrap_err().to_string();
        assert!(err.contains("VARCHAR needs a length"), "{err}");
    }
}
