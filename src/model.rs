//! The output data model: our data types (invoices, customers, …) as data, one TOML file per
//! data type under `schemas/datatypes/`.
//!
//! Takes the TOML files (embedded, or a folder given at run time) and produces a validated
//! [`DataModel`]. This one definition drives the tables the SQL rules must produce (names and
//! DuckDB types, checked after every run), the checks generated from it (unique ids, references
//! between data types), the control totals (every top-level money field is summed), and later
//! the API and its OpenAPI document. Fields every record carries (`id`, `isDeleted`, lineage…)
//! are written once in `_record.toml` and appended to each data type.

use std::path::{Path, PathBuf};

use serde::Deserialize;

include!(concat!(env!("OUT_DIR"), "/embedded.rs"));

/// File holding the fields common to every data type.
const RECORD_FILE: &str = "_record.toml";
/// The record id every data type has (in `_record.toml`).
pub const ID_FIELD: &str = "id";
/// The deletion flag every data type has (in `_record.toml`).
pub const IS_DELETED_FIELD: &str = "isDeleted";
/// The lineage back to Sage every data type has (in `_record.toml`).
pub const LINEAGE_FIELD: &str = "lineage";
/// Version of the data model as published: bump it when a field is removed, renamed or
/// changes type (adding a field or a data type is compatible). Snapshot manifests carry it;
/// the server refuses a snapshot of a version it does not know.
pub const SCHEMA_VERSION: u32 = 1;

/// Why the data model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read.
    #[error("cannot read data model file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not valid TOML for a data type.
    #[error("data model file {file}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// What is wrong.
        message: String,
    },
}

/// The type of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    /// Text.
    String,
    /// A whole number.
    Integer,
    /// true / false.
    Boolean,
    /// A calendar date.
    Date,
    /// A date and time (UTC, no zone).
    Datetime,
    /// Money: exact decimal with 2 places.
    Money,
    /// An exact decimal with 6 places (rates, quantities).
    Decimal,
    /// A nested object with `fields`.
    Object,
    /// A list of objects (`fields`) or of scalars (`items`).
    Array,
}

/// One field of a data type.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Field {
    /// camelCase name, as API clients see it.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub ty: FieldType,
    /// What it means, for the API documentation.
    pub description: String,
    /// Whether API queries may filter and sort on it.
    #[serde(default)]
    pub filterable: bool,
    /// Whether it may be null.
    #[serde(default)]
    pub nullable: bool,
    /// For an `id` inside a list of objects: the values are unique within the data type
    /// (checked by the generated check `unique_ids`; a record's own `id` always is).
    #[serde(default)]
    pub unique: bool,
    /// For an object with an `id`: the data type whose record it points at.
    #[serde(default, rename = "ref")]
    pub reference: Option<String>,
    /// For objects and arrays of objects: the nested fields.
    #[serde(default)]
    pub fields: Vec<Field>,
    /// For arrays of scalars: the element type.
    #[serde(default)]
    pub items: Option<FieldType>,
}

impl Field {
    /// The DuckDB type the rules must produce for this field.
    pub fn duckdb_type(&self) -> String {
        match self.ty {
            FieldType::Object => struct_type(&self.fields),
            FieldType::Array => match self.items {
                Some(item) => format!("{}[]", scalar_type(item)),
                None => format!("{}[]", struct_type(&self.fields)),
            },
            scalar => scalar_type(scalar).to_owned(),
        }
    }

    fn validate(&self, file: &str, path: &str) -> Result<(), ModelError> {
        let here = format!("{path}{}", self.name);
        let bad = |message: String| {
            Err(ModelError::Parse {
                file: file.to_owned(),
                message: format!("field {here}: {message}"),
            })
        };
        if !is_camel_case(&self.name) {
            return bad("names are camelCase ASCII, starting with a lower-case letter".into());
        }
        match (self.ty, self.fields.is_empty(), self.items) {
            (FieldType::Object, false, None) | (FieldType::Array, false, None) => {}
            (FieldType::Array, true, Some(FieldType::Object | FieldType::Array)) => {
                return bad("`items` must be a scalar type; use `fields` for objects".into());
            }
            (FieldType::Array, true, Some(_)) => {}
            (FieldType::Object | FieldType::Array, _, _) => {
                return bad("objects need `fields`; arrays need either `fields` or `items`".into());
            }
            (_, true, None) => {}
            _ => return bad("only objects and arrays have `fields` or `items`".into()),
        }
        if self.reference.is_some() && !self.fields.iter().any(|f| f.name == "id") {
            return bad("`ref` needs an `id` field inside the object".into());
        }
        let nested = format!("{here}.");
        for f in &self.fields {
            f.validate(file, &nested)?;
        }
        Ok(())
    }
}

/// camelCase ASCII starting with a lower-case letter, as API clients expect names.
fn is_camel_case(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_alphanumeric())
}

fn scalar_type(ty: FieldType) -> &'static str {
    match ty {
        FieldType::String => "VARCHAR",
        FieldType::Integer => "BIGINT",
        FieldType::Boolean => "BOOLEAN",
        FieldType::Date => "DATE",
        FieldType::Datetime => "TIMESTAMP",
        FieldType::Money => "DECIMAL(18,2)",
        FieldType::Decimal => "DECIMAL(18,6)",
        FieldType::Object | FieldType::Array => unreachable!("not a scalar"),
    }
}

fn struct_type(fields: &[Field]) -> String {
    let inner: Vec<String> = fields
        .iter()
        .map(|f| format!("\"{}\" {}", f.name, f.duckdb_type()))
        .collect();
    format!("STRUCT({})", inner.join(", "))
}

/// One data type: the table the rules produce and the API serves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataType {
    /// Name, camelCase plural (`invoices`); also the rules' output table.
    pub name: String,
    /// What a record is, for the API documentation.
    pub description: String,
    /// Where it comes from in Sage.
    pub source: String,
    /// Its fields, the common record fields appended.
    #[serde(rename = "field")]
    pub fields: Vec<Field>,
    /// The file it was read from.
    #[serde(skip)]
    pub file: String,
    /// Where that file is, for messages (`schemas/datatypes/x.toml (built in)` or a path).
    #[serde(skip)]
    pub origin: String,
}

impl DataType {
    /// The field with this name.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordFields {
    #[serde(rename = "field")]
    fields: Vec<Field>,
}

/// All data types, in file-name order.
#[derive(Debug, Clone)]
pub struct DataModel {
    /// The data types.
    pub types: Vec<DataType>,
}

impl DataModel {
    /// The data model compiled into the binary.
    pub fn embedded() -> Self {
        let files = EMBEDDED_DATA_TYPES
            .iter()
            .map(|(name, text)| ((*name).to_owned(), (*text).to_owned()))
            .collect();
        Self::parse_from(files, "schemas/datatypes (built in)")
            .expect("the embedded data model is valid (tested)")
    }

    /// The embedded data model, or the one in `dir` when given.
    pub fn from_option(dir: Option<&Path>) -> Result<Self, ModelError> {
        dir.map_or_else(|| Ok(Self::embedded()), Self::load)
    }

    /// Reads every `*.toml` in a folder.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let files = crate::files::read_with_extension(dir, "toml")
            .map_err(|(path, source)| ModelError::Read { path, source })?;
        Self::parse_from(files, &dir.display().to_string())
    }

    /// Parses and validates (file name, text) pairs; `_record.toml` holds the common fields.
    pub fn parse(files: Vec<(String, String)>) -> Result<Self, ModelError> {
        Self::parse_from(files, "schemas/datatypes")
    }

    fn parse_from(files: Vec<(String, String)>, folder: &str) -> Result<Self, ModelError> {
        let parse_err = |file: &str, e: toml::de::Error| ModelError::Parse {
            file: file.to_owned(),
            message: e.to_string(),
        };
        let record = files
            .iter()
            .find(|(name, _)| name == RECORD_FILE)
            .ok_or_else(|| ModelError::Parse {
                file: RECORD_FILE.into(),
                message: "missing: it lists the fields every record carries".into(),
            })?;
        let common: RecordFields =
            toml::from_str(&record.1).map_err(|e| parse_err(RECORD_FILE, e))?;
        for required in [ID_FIELD, IS_DELETED_FIELD, LINEAGE_FIELD] {
            if !common.fields.iter().any(|f| f.name == required) {
                return Err(ModelError::Parse {
                    file: RECORD_FILE.into(),
                    message: format!(
                        "the common field {required} is missing: the rules' checks and totals rely on it"
                    ),
                });
            }
        }
        let mut types = Vec::new();
        for (file, text) in files.iter().filter(|(name, _)| name != RECORD_FILE) {
            let mut ty: DataType = toml::from_str(text).map_err(|e| parse_err(file, e))?;
            ty.file = file.clone();
            ty.origin = format!("{folder}/{file}");
            if !is_camel_case(&ty.name) {
                return Err(ModelError::Parse {
                    file: file.clone(),
                    message: format!(
                        "data type name {:?}: names are camelCase ASCII, starting with a lower-case letter",
                        ty.name
                    ),
                });
            }
            if format!("{}.toml", ty.name) != *file {
                return Err(ModelError::Parse {
                    file: file.clone(),
                    message: format!("declares name = \"{}\"; rename one to match", ty.name),
                });
            }
            ty.fields.extend(common.fields.iter().cloned());
            let mut seen = std::collections::HashSet::new();
            for f in &ty.fields {
                f.validate(file, "")?;
                if !seen.insert(f.name.as_str()) {
                    return Err(ModelError::Parse {
                        file: file.clone(),
                        message: format!("field {} is declared twice", f.name),
                    });
                }
            }
            types.push(ty);
        }
        let model = DataModel { types };
        for ty in &model.types {
            model.check_references(ty, &ty.fields)?;
        }
        Ok(model)
    }

    fn check_references(&self, ty: &DataType, fields: &[Field]) -> Result<(), ModelError> {
        for f in fields {
            if let Some(target) = &f.reference
                && self.get(target).is_none()
            {
                return Err(ModelError::Parse {
                    file: ty.file.clone(),
                    message: format!("field {} refers to unknown data type {target}", f.name),
                });
            }
            self.check_references(ty, &f.fields)?;
        }
        Ok(())
    }

    /// The data type with this name.
    pub fn get(&self, name: &str) -> Option<&DataType> {
        self.types.iter().find(|t| t.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_model_loads_with_common_fields() {
        let model = DataModel::embedded();
        let invoices = model.get("invoices").expect("invoices");
        assert!(invoices.field("id").is_some());
        assert!(invoices.field("isDeleted").is_some());
        assert_eq!(
            invoices.field("totalAmount").unwrap().duckdb_type(),
            "DECIMAL(18,2)"
        );
    }

    #[test]
    fn unknown_reference_is_named() {
        let files = vec![
            (
                RECORD_FILE.to_owned(),
                "[[field]]\nname = \"id\"\ntype = \"string\"\ndescription = \"x\"\n\
                 [[field]]\nname = \"isDeleted\"\ntype = \"boolean\"\ndescription = \"d\"\n\
                 [[field]]\nname = \"lineage\"\ntype = \"array\"\nitems = \"integer\"\ndescription = \"l\"\n"
                    .to_owned(),
            ),
            (
                "things.toml".to_owned(),
                "name = \"things\"\ndescription = \"d\"\nsource = \"s\"\n[[field]]\nname = \"ownerRef\"\ntype = \"object\"\ndescription = \"o\"\nref = \"owners\"\n[[field.fields]]\nname = \"id\"\ntype = \"string\"\ndescription = \"i\"\n".to_owned(),
            ),
        ];
        let err = DataModel::parse(files).unwrap_err().to_string();
        assert!(
            err.contains("things.toml") && err.contains("owners"),
            "{err}"
        );
    }
}
