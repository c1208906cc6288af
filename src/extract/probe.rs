//! The settings page's **Test**: connect to a Sage company and ask it a few facts, so the
//! user sees that the folder and login are right before anything is saved.
//!
//! Takes a [`SourceConfig`]; produces a [`Probe`] (company name and id, last transaction date,
//! the program version where the driver has it, the data path and driver) or the same
//! [`ExtractError`] a sync would meet, in the words of the README's error table.

use odbc_api::Cursor;
use serde::Serialize;

use super::text::{TextEncoding, TextMode, push_utf16};
use super::{ExtractError, environment};
use crate::source::SourceConfig;

/// What Sage says about a company.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    /// `COMPANY.NAME`.
    pub company_name: String,
    /// `COMPANY.COMPANYID`: the company's identity across moves.
    pub company_id: String,
    /// The newest `AUDIT_HEADER.DATE`, if there are transactions.
    pub last_transaction_date: Option<String>,
    /// `COMPANY.PROGRAM_VERSION`, where the driver has it.
    pub program_version: Option<String>,
    /// The data path from the connection string.
    pub data_path: Option<String>,
    /// The ODBC driver.
    pub driver: Option<String>,
}

/// The first row of a one-row query, as text per column.
fn first_row(
    conn: &odbc_api::Connection<'_>,
    source: &SourceConfig,
    table: &str,
    sql: &str,
    columns: usize,
) -> Result<Option<Vec<Option<String>>>, ExtractError> {
    let err = |e: odbc_api::Error| ExtractError::Fetch {
        table: table.to_owned(),
        column: None,
        rows_before: 0,
        detail: source.redact(&e.to_string()),
    };
    let Some(mut cursor) = conn
        .execute(sql, (), None)
        .map_err(|e| source.classify_query(&e))?
    else {
        return Ok(None);
    };
    let Some(mut row) = cursor.next_row().map_err(err)? else {
        return Ok(None);
    };
    let encoding = source.text_encoding()?;
    let mut values = Vec::with_capacity(columns);
    for i in 1..=columns {
        values.push(text_value(&mut row, i as u16, encoding).map_err(err)?);
    }
    Ok(Some(values))
}

/// One value as text, read as the extractor reads text: wide where the setting and the
/// driver allow, else narrow bytes decoded from the driver's code page.
fn text_value(
    row: &mut odbc_api::CursorRow<'_>,
    column: u16,
    encoding: TextEncoding,
) -> Result<Option<String>, odbc_api::Error> {
    let narrow = match encoding.first_mode() {
        TextMode::Wide => {
            let mut units = Vec::new();
            match row.get_wide_text(column, &mut units) {
                Ok(present) => {
                    let mut s = String::new();
                    return Ok(present.then(|| {
                        if !push_utf16(&mut s, &units) {
                            s = String::from_utf16_lossy(&units);
                        }
                        s.trim().to_owned()
                    }));
                }
                Err(e) => match encoding.fallback() {
                    Some(TextMode::Narrow(n)) => n,
                    _ => return Err(e),
                },
            }
        }
        TextMode::Narrow(n) => n,
    };
    let mut bytes = Vec::new();
    let present = row.get_text(column, &mut bytes)?;
    Ok(present.then(|| match narrow.decode(&bytes) {
        Some(s) => s.trim().to_owned(),
        None => String::from_utf8_lossy(&bytes).trim().to_owned(),
    }))
}

/// Connects and reads the facts; fails as a sync would.
pub fn probe(source: &SourceConfig) -> Result<Probe, ExtractError> {
    let conn = source.connect(environment(source)?)?;
    let company = first_row(
        &conn,
        source,
        "COMPANY",
        "SELECT NAME, COMPANYID FROM COMPANY",
        2,
    )?
    .ok_or_else(|| ExtractError::TableMissing {
        table: "COMPANY".into(),
    })?;
    let version = first_row(
        &conn,
        source,
        "COMPANY",
        "SELECT PROGRAM_VERSION FROM COMPANY",
        1,
    )
    .ok()
    .flatten()
    .and_then(|r| r.into_iter().next().flatten())
    .filter(|v| !v.is_empty());
    let last = first_row(
        &conn,
        source,
        "AUDIT_HEADER",
        "SELECT MAX(DATE) FROM AUDIT_HEADER",
        1,
    )?
    .and_then(|r| r.into_iter().next().flatten())
    .filter(|d| !d.is_empty())
    // A driver may answer a timestamp: the date is what the user knows.
    .map(|d| d.chars().take(10).collect());
    let mut values = company.into_iter();
    Ok(Probe {
        company_name: values.next().flatten().unwrap_or_default(),
        company_id: values.next().flatten().unwrap_or_default(),
        last_transaction_date: last,
        program_version: version,
        data_path: source.data_path().map(|p| p.display().to_string()),
        driver: source.driver(),
    })
}
