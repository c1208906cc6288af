//! The API's query language, turned into SQL only through an allow-list and bound parameters.
//!
//! ```text
//! query      := or
//! or         := and ( "||" and )*
//! and        := term ( "&&" term )*
//! term       := "{" or "}" | comparison
//! comparison := path op value          op: = != ~ > < >= <=
//! path       := name ( "." name )*     a filterable field, or a field inside an object
//! value      := "quoted \"string\"" | bare text up to a space, &&, || or }
//! ```
//!
//! Values are typed by the field: dates `YYYY-MM-DD`, date-times RFC 3339 (or a date), exact
//! decimals, integers, `true`/`false`; `~` (contains, case-insensitive) is for text. A field
//! becomes a quoted identifier only after it is found in the data model; every value is a
//! bound parameter. Nothing from a request is pasted into SQL. Errors name the token at fault.

use crate::model::{DataType, Field, FieldType};
use chrono::{Datelike, Timelike};

/// Longest `query` accepted, in characters.
pub const MAX_QUERY_CHARS: usize = 2048;
/// Deepest `{}` nesting accepted.
const MAX_DEPTH: usize = 32;
/// Most comparisons one query may hold: each is a pass over the data type's rows (a `~` on
/// a large table costs milliseconds), so hundreds of them would take one request seconds.
pub const MAX_TERMS: usize = 20;

/// A request the API refuses, with what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QueryError(pub String);

/// A WHERE clause and its parameters, in order, and the same condition as a tree (what
/// [`super::served`] evaluates in memory).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Filter {
    /// SQL with `?` placeholders; empty for no filter.
    pub sql: String,
    /// The values, as text (cast in SQL to the field's type).
    pub params: Vec<String>,
    /// The condition; None for no filter.
    pub expr: Option<Expr>,
}

/// A parsed query: comparisons joined by AND and OR (there is no NOT: `!=` is SQL's `IS
/// DISTINCT FROM`, so a row where a comparison is NULL is simply not matched by it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// Every one holds.
    All(Vec<Expr>),
    /// At least one holds.
    Any(Vec<Expr>),
    /// `path op value`.
    Compare {
        /// The field and the fields inside it, as named.
        path: Vec<String>,
        /// The field's type.
        ty: FieldType,
        /// The operator.
        op: Op,
        /// The value as bound in SQL: checked and written the one way its type reads
        /// (dates `YYYY-MM-DD`, date-times `YYYY-MM-DD HH:MM:SS.ffffff` UTC, decimals as
        /// given, text lowercased for `~`).
        value: String,
    },
}

/// A comparison's operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `=`
    Eq,
    /// `!=`: true where the field is NULL.
    Ne,
    /// `~`: the lowercased text holds the (lowercased) value.
    Contains,
    /// `>`
    Gt,
    /// `<`
    Lt,
    /// `>=`
    Ge,
    /// `<=`
    Le,
}

/// A field a query or an ordering may name: its SQL expression and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Quoted SQL expression (`"issueDate"`, `"customerRef"."id"`).
    pub sql: String,
    /// The field and the fields inside it, as named (`["customerRef", "id"]`).
    pub path: Vec<String>,
    /// Its type.
    pub ty: FieldType,
}

/// Fields every served record has besides the model's.
pub const MODIFIED_DATE: &str = "modifiedDate";

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Whether a query or an ordering may name top-level field `f` (itself, or a field inside
/// it): a filterable scalar, or an object. Lists never. What [`column`] accepts at the top.
pub fn nameable(f: &Field) -> bool {
    match f.ty {
        FieldType::Object => true,
        FieldType::Array => false,
        _ => f.filterable,
    }
}

/// Resolves a dot path against the data type's fields: top-level fields must be filterable;
/// inside an object any scalar field may be named.
pub fn column(data_type: &DataType, path: &str) -> Result<Column, QueryError> {
    if path == MODIFIED_DATE {
        return Ok(Column {
            sql: quote(MODIFIED_DATE),
            path: vec![MODIFIED_DATE.to_owned()],
            ty: FieldType::Datetime,
        });
    }
    let mut parts = path.split('.');
    let first = parts.next().unwrap_or_default();
    let unknown = |name: &str| {
        QueryError(format!(
            "unknown field {name:?} for {}: see /openapi.json for its fields",
            data_type.name
        ))
    };
    let mut field: &Field = data_type
        .fields
        .iter()
        .find(|f| f.name == first)
        .ok_or_else(|| unknown(first))?;
    let mut sql = quote(first);
    let top_level = field;
    for part in parts {
        if field.ty != FieldType::Object {
            return Err(QueryError(format!(
                "field {path:?}: {} has no fields inside it",
                field.name
            )));
        }
        field = field
            .fields
            .iter()
            .find(|f| f.name == part)
            .ok_or_else(|| unknown(path))?;
        sql.push('.');
        sql.push_str(&quote(part));
    }
    match field.ty {
        FieldType::Object | FieldType::Array => Err(QueryError(format!(
            "field {path:?} is {}: filter or order on a field inside it",
            if field.ty == FieldType::Array {
                "a list"
            } else {
                "an object"
            }
        ))),
        _ if std::ptr::eq(field, top_level) && !field.filterable => Err(QueryError(format!(
            "field {path:?} cannot be filtered or sorted on: the filterable fields of {} are listed in /openapi.json",
            data_type.name
        ))),
        ty => Ok(Column {
            sql,
            path: path.split('.').map(str::to_owned).collect(),
            ty,
        }),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Open,
    Close,
    And,
    Or,
    Op(&'static str),
    Text(String),
    Quoted(String),
}

fn tokens(query: &str) -> Result<Vec<(usize, Token)>, QueryError> {
    let chars: Vec<char> = query.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
        let start = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let token = if c == '{' {
            i += 1;
            Token::Open
        } else if c == '}' {
            i += 1;
            Token::Close
        } else if rest == "&&" {
            i += 2;
            Token::And
        } else if rest == "||" {
            i += 2;
            Token::Or
        } else if let Some(op) = ["!=", ">=", "<="].into_iter().find(|op| rest == *op) {
            i += 2;
            Token::Op(op)
        } else if let Some(op) = ["=", "~", ">", "<"]
            .into_iter()
            .find(|op| c.to_string() == *op)
        {
            i += 1;
            Token::Op(op)
        } else if c == '"' {
            let mut text = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => {
                        return Err(QueryError(format!(
                            "the quoted string starting at character {} is not closed",
                            start + 1
                        )));
                    }
                    Some('\\') if matches!(chars.get(i + 1), Some('"') | Some('\\')) => {
                        text.push(chars[i + 1]);
                        i += 2;
                    }
                    Some('"') => {
                        i += 1;
                        break;
                    }
                    Some(ch) => {
                        text.push(*ch);
                        i += 1;
                    }
                }
            }
            Token::Quoted(text)
        } else {
            let mut text = String::new();
            while let Some(&ch) = chars.get(i) {
                let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
                if ch.is_whitespace() || "{}=~<>!\"".contains(ch) || two == "&&" || two == "||" {
                    break;
                }
                text.push(ch);
                i += 1;
            }
            if text.is_empty() {
                return Err(QueryError(format!(
                    "unexpected {c:?} at character {}",
                    start + 1
                )));
            }
            Token::Text(text)
        };
        out.push((start + 1, token));
    }
    Ok(out)
}

struct Parser<'a> {
    tokens: Vec<(usize, Token)>,
    at: usize,
    data_type: &'a DataType,
    filter: Filter,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at).map(|(_, t)| t)
    }

    fn position(&self) -> String {
        match self.tokens.get(self.at) {
            Some((pos, _)) => format!("at character {pos}"),
            None => "at the end of the query".into(),
        }
    }

    fn or(&mut self, depth: usize) -> Result<(String, Expr), QueryError> {
        let mut parts = vec![self.and(depth)?];
        while self.peek() == Some(&Token::Or) {
            self.at += 1;
            parts.push(self.and(depth)?);
        }
        Ok(joined(parts, " OR ", Expr::Any))
    }

    fn and(&mut self, depth: usize) -> Result<(String, Expr), QueryError> {
        let mut parts = vec![self.term(depth)?];
        while self.peek() == Some(&Token::And) {
            self.at += 1;
            parts.push(self.term(depth)?);
        }
        Ok(joined(parts, " AND ", Expr::All))
    }

    fn term(&mut self, depth: usize) -> Result<(String, Expr), QueryError> {
        if self.peek() == Some(&Token::Open) {
            if depth >= MAX_DEPTH {
                return Err(QueryError(format!(
                    "braces nested deeper than {MAX_DEPTH} {}",
                    self.position()
                )));
            }
            self.at += 1;
            let inner = self.or(depth + 1)?;
            if self.peek() != Some(&Token::Close) {
                return Err(QueryError(format!(
                    "unbalanced braces: expected }} {}",
                    self.position()
                )));
            }
            self.at += 1;
            return Ok(inner);
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<(String, Expr), QueryError> {
        if self.filter.params.len() >= MAX_TERMS {
            return Err(QueryError(format!(
                "more than {MAX_TERMS} comparisons, the most one query may hold {}: split it into several requests",
                self.position()
            )));
        }
        let path = match self.tokens.get(self.at) {
            Some((_, Token::Text(t))) => t.clone(),
            _ => {
                return Err(QueryError(format!(
                    "expected a field name {}",
                    self.position()
                )));
            }
        };
        self.at += 1;
        let column = column(self.data_type, &path)?;
        let op = match self.peek() {
            Some(Token::Op(op)) => *op,
            _ => {
                return Err(QueryError(format!(
                    "expected one of = != ~ > < >= <= after {path:?} {}",
                    self.position()
                )));
            }
        };
        self.at += 1;
        let value = match self.tokens.get(self.at) {
            Some((_, Token::Text(t) | Token::Quoted(t))) => t.clone(),
            _ => {
                return Err(QueryError(format!(
                    "expected a value after {path:?} {op} {}",
                    self.position()
                )));
            }
        };
        self.at += 1;
        let (placeholder, value) = typed(&path, column.ty, &value)?;
        if op == "~" {
            if column.ty != FieldType::String {
                return Err(QueryError(format!(
                    "~ (contains) is for text, and {path:?} is not text"
                )));
            }
            let value = value.to_lowercase();
            self.filter.params.push(value.clone());
            let expr = Expr::Compare {
                path: column.path,
                ty: column.ty,
                op: Op::Contains,
                value,
            };
            return Ok((format!("contains(lower({}), ?)", column.sql), expr));
        }
        if column.ty == FieldType::Boolean && !matches!(op, "=" | "!=") {
            return Err(QueryError(format!(
                "{path:?} is true or false: use = or !="
            )));
        }
        self.filter.params.push(value.clone());
        let sql = format!(
            "{} {} {placeholder}",
            column.sql,
            if op == "!=" { "IS DISTINCT FROM" } else { op }
        );
        let op = match op {
            "=" => Op::Eq,
            "!=" => Op::Ne,
            ">" => Op::Gt,
            "<" => Op::Lt,
            ">=" => Op::Ge,
            _ => Op::Le,
        };
        let expr = Expr::Compare {
            path: column.path,
            ty: column.ty,
            op,
            value,
        };
        Ok((sql, expr))
    }
}

/// Comparisons or groups joined by AND or OR: the SQL in parentheses, and the tree.
fn joined(
    mut parts: Vec<(String, Expr)>,
    joiner: &str,
    group: fn(Vec<Expr>) -> Expr,
) -> (String, Expr) {
    if parts.len() == 1 {
        return parts.remove(0);
    }
    let (sql, exprs): (Vec<String>, Vec<Expr>) = parts.into_iter().unzip();
    (format!("({})", sql.join(joiner)), group(exprs))
}

/// The years a date or date-time in a query may have (what DuckDB's DATE reads back as
/// written; records hold nothing outside them).
const YEARS: std::ops::RangeInclusive<i32> = 1..=9999;

/// Checks `value` against the field's type; returns the SQL placeholder (with its cast) and
/// the value to bind.
fn typed(path: &str, ty: FieldType, value: &str) -> Result<(&'static str, String), QueryError> {
    let wrong =
        |expected: &str| QueryError(format!("{path:?} is {expected}, and {value:?} is not one"));
    Ok(match ty {
        FieldType::String => ("?", value.to_owned()),
        FieldType::Integer => {
            value.parse::<i64>().map_err(|_| wrong("a whole number"))?;
            ("CAST(? AS BIGINT)", value.to_owned())
        }
        FieldType::Boolean => match value {
            "true" | "false" => ("CAST(? AS BOOLEAN)", value.to_owned()),
            _ => return Err(wrong("true or false")),
        },
        FieldType::Date => {
            let date = chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d")
                .ok()
                .filter(|d| YEARS.contains(&d.year()))
                .ok_or_else(|| wrong("a date (YYYY-MM-DD, years 0001 to 9999)"))?;
            // the parsed date is bound, written the one way DuckDB reads
            ("CAST(? AS DATE)", date.format("%Y-%m-%d").to_string())
        }
        FieldType::Datetime => {
            let parsed = chrono::DateTime::parse_from_rfc3339(value)
                .map(|t| t.to_utc().naive_utc())
                .or_else(|_| {
                    chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d")
                        .map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default())
                })
                .ok()
                .filter(|t| YEARS.contains(&t.year()))
                .ok_or_else(|| {
                    wrong("a date-time (RFC 3339, e.g. 2025-03-10T09:30:00Z, or a date; years 0001 to 9999)")
                })?;
            // chrono keeps a leap second (:60) as a nanosecond count past a whole second
            if parsed.nanosecond() >= 1_000_000_000 {
                return Err(wrong(
                    "a date-time without a leap second (:60 is not kept: use :59)",
                ));
            }
            (
                "CAST(? AS TIMESTAMP)",
                parsed.format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
            )
        }
        FieldType::Money | FieldType::Decimal => {
            let ok = {
                let digits = value.strip_prefix('-').unwrap_or(value);
                let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
                !int.is_empty()
                    && int.len() <= 18
                    && frac.len() <= 6
                    && int.bytes().all(|b| b.is_ascii_digit())
                    && frac.bytes().all(|b| b.is_ascii_digit())
            };
            if !ok {
                return Err(wrong("an exact decimal (e.g. 1234.56)"));
            }
            ("CAST(? AS DECIMAL(24,6))", value.to_owned())
        }
        FieldType::Object | FieldType::Array => return Err(wrong("a scalar")),
    })
}

/// Parses `query` for `data_type` into a WHERE clause.
pub fn parse(data_type: &DataType, query: &str) -> Result<Filter, QueryError> {
    if query.chars().count() > MAX_QUERY_CHARS {
        return Err(QueryError(format!(
            "query is {} characters long; the limit is {MAX_QUERY_CHARS}",
            query.chars().count()
        )));
    }
    let tokens = tokens(query)?;
    if tokens.is_empty() {
        return Ok(Filter::default());
    }
    let mut parser = Parser {
        tokens,
        at: 0,
        data_type,
        filter: Filter::default(),
    };
    let (sql, expr) = parser.or(0)?;
    if parser.at < parser.tokens.len() {
        return Err(QueryError(match parser.peek() {
            Some(Token::Close) => format!("unbalanced braces: }} {} has no {{", parser.position()),
            _ => format!("expected && or || {}", parser.position()),
        }));
    }
    parser.filter.sql = sql;
    parser.filter.expr = Some(expr);
    Ok(parser.filter)
}

/// Where the next page of a cursor walk starts: the last row's ordering value (as DuckDB
/// writes it as text; None for NULL) and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct After {
    /// The ordering field's value.
    pub value: Option<String>,
    /// The record id (the tie-breaker of every ordering).
    pub id: String,
}

/// `orderBy=field` or `-field`, checked against the data type once per request: the ORDER
/// BY list, the value a page ends on, and where the next page begins all come from it.
#[derive(Debug, Clone)]
pub struct Ordering {
    /// The field's column (the id when orderBy is left out).
    column: Column,
    /// `-field`.
    desc: bool,
}

impl Ordering {
    /// The ordering `spec` names (by id when None); an unknown field or an empty spec is an
    /// error naming orderBy.
    pub fn parse(data_type: &DataType, spec: Option<&str>) -> Result<Ordering, QueryError> {
        let id = Column {
            sql: quote(crate::model::ID_FIELD),
            path: vec![crate::model::ID_FIELD.to_owned()],
            ty: FieldType::String,
        };
        let Some(spec) = spec else {
            return Ok(Ordering {
                column: id,
                desc: false,
            });
        };
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(QueryError(
                "orderBy is empty: name a field (a leading - sorts descending), or leave orderBy out"
                    .into(),
            ));
        }
        let (field, desc) = match spec.strip_prefix('-') {
            Some(f) => (f, true),
            None => (spec, false),
        };
        let column = column(data_type, field).map_err(|e| QueryError(format!("orderBy: {e}")))?;
        Ok(Ordering { column, desc })
    }

    /// Whether it is by id (the tie-breaker of every other ordering).
    pub fn is_id(&self) -> bool {
        self.column.sql == quote(crate::model::ID_FIELD)
    }

    /// The field sorted on.
    pub fn column(&self) -> &Column {
        &self.column
    }

    /// Whether it is descending.
    pub fn descending(&self) -> bool {
        self.desc
    }

    /// The ORDER BY list: NULLs last, always ending with the id, so pages are stable.
    pub fn sql(&self) -> String {
        let (id, dir) = (quote(crate::model::ID_FIELD), self.direction());
        if self.is_id() {
            return format!("{id} {dir}");
        }
        format!("{} {dir} NULLS LAST, {id} {dir}", self.column.sql)
    }

    fn direction(&self) -> &'static str {
        if self.desc { "DESC" } else { "ASC" }
    }

    /// SQL giving a row's ordering value as text, to find where the next page begins.
    pub fn value_sql(&self) -> String {
        format!("CAST({} AS VARCHAR)", self.column.sql)
    }

    /// The condition selecting the rows that come after `after` in this ordering, and its
    /// parameters. A page read with it costs a page, however deep: nothing before it is
    /// sorted or skipped.
    pub fn after(&self, after: &After) -> (String, Vec<String>) {
        let id = quote(crate::model::ID_FIELD);
        let gt = if self.desc { "<" } else { ">" };
        let cast = match self.column.ty {
            FieldType::Integer => "CAST(? AS BIGINT)",
            FieldType::Boolean => "CAST(? AS BOOLEAN)",
            FieldType::Date => "CAST(? AS DATE)",
            FieldType::Datetime => "CAST(? AS TIMESTAMP)",
            FieldType::Money | FieldType::Decimal => "CAST(? AS DECIMAL(24,6))",
            _ => "?",
        };
        let c = &self.column.sql;
        if self.is_id() {
            return (format!("{id} {gt} ?"), vec![after.id.clone()]);
        }
        match &after.value {
            Some(v) => (
                format!("({c} {gt} {cast} OR ({c} = {cast} AND {id} {gt} ?) OR {c} IS NULL)"),
                vec![v.clone(), v.clone(), after.id.clone()],
            ),
            None => (
                format!("({c} IS NULL AND {id} {gt} ?)"),
                vec![after.id.clone()],
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DataModel;

    fn invoices() -> DataType {
        DataModel::embedded()
            .types
            .into_iter()
            .find(|t| t.name == "invoices")
            .unwrap()
    }

    #[test]
    fn a_query_becomes_bound_sql() {
        let f = parse(
            &invoices(),
            r#"status=Paid && {issueDate>=2025-01-01 || customerRef.id="A&&B \"x\""} && totalAmount>100.5"#,
        )
        .unwrap();
        assert_eq!(
            f.sql,
            r#"("status" = ? AND ("issueDate" >= CAST(? AS DATE) OR "customerRef"."id" = ?) AND "totalAmount" > CAST(? AS DECIMAL(24,6)))"#
        );
        assert_eq!(f.params, ["Paid", "2025-01-01", "A&&B \"x\"", "100.5"]);
    }

    #[test]
    fn bad_queries_name_the_token_at_fault() {
        let t = invoices();
        for (q, says) in [
            ("nosuch=1", "unknown field \"nosuch\""),
            ("issueDate>yesterday", "\"issueDate\" is a date"),
            ("{status=Paid", "unbalanced braces"),
            ("status=Paid}", "unbalanced braces"),
            ("status Paid", "expected one of"),
            ("status=", "expected a value"),
            ("totalAmount~1", "~ (contains) is for text"),
            ("lineItems=1", "is a list"),
            ("status=\"open", "not closed"),
            ("status=Paid status=Void", "expected && or ||"),
            ("totalAmount>1e3", "exact decimal"),
        ] {
            let e = parse(&t, q).unwrap_err().0;
            assert!(e.contains(says), "{q}: {e}");
        }
        let long = "status=Paid&&".repeat(200);
        assert!(parse(&t, &long).unwrap_err().0.contains("limit is 2048"));
        let deep = format!("{}status=Paid{}", "{".repeat(40), "}".repeat(40));
        assert!(parse(&t, &deep).unwrap_err().0.contains("nested deeper"));
    }

    #[test]
    fn ordering_is_allow_listed_and_stable() {
        let t = invoices();
        let order_by = |spec| Ordering::parse(&t, spec).map(|o| o.sql());
        assert_eq!(order_by(None).unwrap(), "\"id\" ASC");
        assert_eq!(
            order_by(Some("-issueDate")).unwrap(),
            "\"issueDate\" DESC NULLS LAST, \"id\" DESC"
        );
        assert!(order_by(Some("issueDate; DROP TABLE x")).is_err());
        assert!(order_by(Some(" ")).is_err());
    }
}
