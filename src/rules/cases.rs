//! Rule test cases: small named Sage inputs with the output tables they must give.
//!
//! A case is one readable file, `fixtures/rules/NAME.case`:
//!
//! ```text
//! -- What the case shows (free comment lines)
//! INSERT INTO sage.AUDIT_HEADER (HEADER_NUMBER, TYPE, "DATE") VALUES (1, 'SI', DATE '2025-05-01');
//! -- expect: SELECT id, issueDate, totalAmount FROM invoices ORDER BY id
//! id | issueDate  | totalAmount
//! 1  | 2025-05-01 | 120.00
//! ```
//!
//! Everything before the first `-- expect:` line is SQL run against empty Sage tables (columns
//! left out are NULL). Each `-- expect: QUERY` is followed by the expected result as a table:
//! a header row and one row per result row, cells separated by `|`, NULL written `NULL`,
//! values as DuckDB renders them as text. A line `-- expect check: NAME pass|warn|fail`
//! states a check's outcome. The rules and then every check run; a case fails on a differing
//! table (shown as a diff), on a check whose outcome differs from the one stated, or on any
//! check error not stated.

use std::path::{Path, PathBuf};

use super::checks::text_rows;
use super::{CheckStatus, Rules, RulesError, Workspace, normalise};
use crate::model::DataModel;
use crate::schema::SourceSchema;

/// File extension of rule test cases.
pub const CASE_EXTENSION: &str = "case";
const EXPECT: &str = "-- expect:";
const EXPECT_CHECK: &str = "-- expect check:";

/// One expected query result.
#[derive(Debug, Clone)]
struct Expectation {
    query: String,
    /// Expected lines: header first.
    table: Vec<Vec<String>>,
    /// Line number of the `-- expect:` line.
    line: usize,
}

/// A parsed rule test case.
#[derive(Debug, Clone)]
pub struct RuleCase {
    /// Case name (file stem).
    pub name: String,
    /// The file.
    pub path: PathBuf,
    input: String,
    expectations: Vec<Expectation>,
    /// (check name, expected status, line).
    checks: Vec<(String, CheckStatus, usize)>,
}

/// What running a case found.
#[derive(Debug, Clone)]
pub struct CaseOutcome {
    /// Case name.
    pub name: String,
    /// The case file.
    pub path: PathBuf,
    /// Readable descriptions of every mismatch; empty = the case passed.
    pub failures: Vec<String>,
}

impl CaseOutcome {
    /// Whether the case passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

impl std::fmt::Display for CaseOutcome {
    /// `ok    NAME`, or `FAIL  NAME (PATH)` followed by each failure, indented.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.passed() {
            return writeln!(f, "ok    {}", self.name);
        }
        writeln!(f, "FAIL  {} ({})", self.name, self.path.display())?;
        for failure in &self.failures {
            writeln!(f, "  {failure}")?;
        }
        Ok(())
    }
}

/// Runs every case of `dir` whose name contains `filter`. A case whose rules fail is a
/// failed case (naming it), not an error; finding no case at all is an error.
pub fn run_cases(
    dir: &Path,
    filter: Option<&str>,
    rules: &Rules,
    model: &DataModel,
    schema: &SourceSchema,
) -> Result<Vec<CaseOutcome>, RulesError> {
    let selected: Vec<RuleCase> = RuleCase::load_dir(dir)?
        .into_iter()
        .filter(|c| filter.is_none_or(|f| c.name.contains(f)))
        .collect();
    if selected.is_empty() {
        return Err(RulesError::Case {
            path: dir.to_owned(),
            line: 0,
            message: format!(
                "no *.{CASE_EXTENSION} file{} here: check --cases and the filter",
                filter
                    .map(|f| format!(" with {f:?} in its name"))
                    .unwrap_or_default()
            ),
        });
    }
    Ok(selected
        .iter()
        .map(|case| {
            case.run(rules, model, schema)
                .unwrap_or_else(|e| CaseOutcome {
                    name: case.name.clone(),
                    path: case.path.clone(),
                    failures: vec![e.to_string()],
                })
        })
        .collect())
}

fn cells(line: &str) -> Vec<String> {
    line.split('|').map(|c| c.trim().to_owned()).collect()
}

impl RuleCase {
    /// Reads and parses a case file.
    pub fn load(path: &Path) -> Result<Self, RulesError> {
        let text = std::fs::read_to_string(path).map_err(|source| RulesError::Read {
            path: path.to_owned(),
            source,
        })?;
        let name = path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let mut input = String::new();
        let mut expectations: Vec<Expectation> = Vec::new();
        let mut checks = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if let Some(rest) = line.trim_start().strip_prefix(EXPECT_CHECK) {
                let mut words = rest.split_whitespace();
                let (Some(name), Some(status)) = (words.next(), words.next()) else {
                    return Err(RulesError::Rule {
                        file: path.display().to_string(),
                        message: format!(
                            "line {}: write `{EXPECT_CHECK} NAME pass|warn|fail`",
                            i + 1
                        ),
                    });
                };
                let status = match status {
                    "pass" => CheckStatus::Pass,
                    "warn" => CheckStatus::Warn,
                    "fail" => CheckStatus::Fail,
                    other => {
                        return Err(RulesError::Rule {
                            file: path.display().to_string(),
                            message: format!(
                                "line {}: unknown check outcome {other:?} (pass, warn or fail)",
                                i + 1
                            ),
                        });
                    }
                };
                checks.push((name.to_owned(), status, i + 1));
            } else if let Some(query) = line.trim_start().strip_prefix(EXPECT) {
                expectations.push(Expectation {
                    query: query.trim().to_owned(),
                    table: Vec::new(),
                    line: i + 1,
                });
            } else if let Some(current) = expectations.last_mut() {
                if !line.trim().is_empty() && !line.trim_start().starts_with("--") {
                    // table rows; comments between expectations are free text
                    current.table.push(cells(line));
                }
            } else {
                input.push_str(line);
                input.push('\n');
            }
        }
        if expectations.is_empty() {
            return Err(RulesError::Case {
                path: path.to_owned(),
                line: 1,
                message: format!("a case needs at least one `{EXPECT} QUERY` line"),
            });
        }
        Ok(RuleCase {
            name,
            path: path.to_owned(),
            input,
            expectations,
            checks,
        })
    }

    /// Every `*.case` file in `dir`, by name.
    pub fn load_dir(dir: &Path) -> Result<Vec<Self>, RulesError> {
        let paths = crate::files::with_extension(dir, CASE_EXTENSION).map_err(|source| {
            RulesError::Read {
                path: dir.to_owned(),
                source,
            }
        })?;
        paths.iter().map(|p| Self::load(p)).collect()
    }

    /// Runs the case: input, rules, checks, expectations.
    pub fn run(
        &self,
        rules: &Rules,
        model: &DataModel,
        schema: &SourceSchema,
    ) -> Result<CaseOutcome, RulesError> {
        let ws = Workspace::empty_source(schema)?;
        ws.conn()
            .execute_batch(&self.input)
            .map_err(|e| RulesError::Case {
                path: self.path.clone(),
                line: 1,
                message: format!("its input SQL failed: {e}"),
            })?;
        let report = normalise(&ws, rules, model)?;
        let mut failures = Vec::new();
        for c in &report.checks {
            let stated = self.checks.iter().find(|(name, _, _)| *name == c.name);
            match stated {
                Some((_, status, line)) if *status != c.status => failures.push(format!(
                    "line {line}: check {} was expected to {:?} but did {:?}:\n    {}",
                    c.name,
                    status,
                    c.status,
                    c.sample.join("\n    ")
                )),
                None if c.status == CheckStatus::Fail => failures.push(format!(
                    "check {} failed:\n    {}",
                    c.name,
                    c.sample.join("\n    ")
                )),
                _ => {}
            }
        }
        for (name, _, line) in &self.checks {
            if !report.checks.iter().any(|c| c.name == *name) {
                failures.push(format!("line {line}: there is no check named {name}"));
            }
        }
        for e in &self.expectations {
            let (columns, rows) = match text_rows(ws.conn(), &e.query) {
                Ok(r) => r,
                Err(err) => {
                    failures.push(format!("line {}: query failed: {err}", e.line));
                    continue;
                }
            };
            let mut actual = vec![columns];
            actual.extend(rows.into_iter().map(|r| {
                r.into_iter()
                    .map(|v| v.unwrap_or_else(|| "NULL".into()))
                    .collect()
            }));
            if actual != e.table {
                failures.push(format!(
                    "line {}: {}\n{}",
                    e.line,
                    e.query,
                    diff(&e.table, &actual)
                ));
            }
        }
        Ok(CaseOutcome {
            name: self.name.clone(),
            path: self.path.clone(),
            failures,
        })
    }
}

/// A line diff of two tables: `  ` same, `- ` expected only, `+ ` actual only.
fn diff(expected: &[Vec<String>], actual: &[Vec<String>]) -> String {
    let render = |row: &Vec<String>| row.join(" | ");
    let (e, a): (Vec<String>, Vec<String>) = (
        expected.iter().map(render).collect(),
        actual.iter().map(render).collect(),
    );
    // Longest common subsequence, so one changed row shows as one -/+ pair.
    let (n, m) = (e.len(), a.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if e[i] == a[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < n || j < m {
        if i < n && j < m && e[i] == a[j] {
            out.push_str(&format!("      {}\n", e[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push_str(&format!("    - {}\n", e[i]));
            i += 1;
        } else {
            out.push_str(&format!("    + {}\n", a[j]));
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_marks_only_the_changed_row() {
        let t = |rows: &[&[&str]]| -> Vec<Vec<String>> {
            rows.iter()
                .map(|r| r.iter().map(|s| s.to_string()).collect())
                .collect()
        };
        let d = diff(
            &t(&[&["id", "total"], &["1", "1.00"], &["2", "2.00"]]),
            &t(&[&["id", "total"], &["1", "1.50"], &["2", "2.00"]]),
        );
        assert_eq!(
            d,
            "      id | total\n    - 1 | 1.00\n    + 1 | 1.50\n      2 | 2.00\n"
        );
    }
}
