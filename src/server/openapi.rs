//! `/openapi.json`: the OpenAPI 3.1 document, generated from the data model (`schemas/`) at
//! start-up, never written by hand.
//!
//! What client generators need from it, and what it gives:
//! - every route the API client calls, every answer with its schema (errors included), the
//!   bearer scheme, and each webhook event's body in the top-level `webhooks` section;
//! - one component per record, named in the singular (`invoices` → `Invoice`), a page wrapper
//!   per data type (`InvoicePage`), and every nested object of the model defined once, named
//!   after its field (`customerRef` → `CustomerRef`, `lineItems` → `LineItem`). Two nested
//!   objects with one name but different fields: the shape most data types use keeps the name,
//!   the others are prefixed with their record (`BankTransactionLineItem`). Names the API's own
//!   resources use (`Company`, `Webhook`, …) are never taken by the model: a data type that
//!   would collide gets `Record` appended (`company` → `CompanyRecord`);
//! - `query`, `orderBy` and `snapshot` described as exactly as a pattern can: the query pattern
//!   accepts only comparisons the server accepts (each field with values of its type), so a
//!   string generated from the document is never refused.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use crate::model::{DataModel, DataType, Field, FieldType};

use super::query::{MAX_QUERY_CHARS, MAX_TERMS, MODIFIED_DATE};

/// Component names of the API's own resources: the data model never takes them.
const API_COMPONENTS: [&str; 31] = [
    "Error",
    "Link",
    "Links",
    "Company",
    "CompanyList",
    "NewCompany",
    "CompanyLink",
    "ConnectorReason",
    "ConnectorSummary",
    "SyncResult",
    "SyncRequested",
    "StoreCheck",
    "DataStatus",
    "DataTypeStatus",
    "Snapshot",
    "SnapshotList",
    "Device",
    "DeviceList",
    "EventType",
    "NewWebhook",
    "Webhook",
    "WebhookCreated",
    "WebhookList",
    "Delivery",
    "DeliveryAttempt",
    "DeliveryPage",
    "Changes",
    "DataSyncedEvent",
    "SyncFailedEvent",
    "CompanyStatusChangedEvent",
    "CompanyDataStatus",
];

/// What `redirectUrl` must look like (`api::check_redirect`).
const REDIRECT_PATTERN: &str = "^(https://|http://localhost|http://127\\.0\\.0\\.1|http://\\[::1\\])[^\\s\\x00-\\x1f\\x7f-\\x9f]*$";

/// The shape of a snapshot id (`snapshot::is_snapshot_id`).
pub const SNAPSHOT_ID_PATTERN: &str = "^[0-9]{8}T[0-9]{9}Z-[0-9a-fA-F]{8}$";

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// `invoices` → `Invoice`, `journalEntries` → `JournalEntry`, `address` → `Address`.
fn singular(name: &str) -> String {
    if let Some(stem) = name.strip_suffix("ies") {
        format!("{stem}y")
    } else if name.ends_with("ss") || name.ends_with("us") {
        name.to_owned()
    } else if let Some(stem) = name.strip_suffix("sses") {
        format!("{stem}ss")
    } else {
        name.strip_suffix('s').unwrap_or(name).to_owned()
    }
}

fn pascal(name: &str) -> String {
    let mut chars = name.chars();
    chars
        .next()
        .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

fn snake(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            if !out.is_empty() {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A nested object's structure, descriptions left out: two fields with one shape share a
/// component.
fn shape(fields: &[Field]) -> String {
    fields
        .iter()
        .map(|f| {
            format!(
                "{}:{:?}:{}:{:?}:{:?}[{}]",
                f.name,
                f.ty,
                f.nullable,
                f.items,
                f.reference,
                shape(&f.fields)
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether a field's value is a nested object (alone or in a list).
fn nests(f: &Field) -> bool {
    !f.fields.is_empty() && matches!(f.ty, FieldType::Object | FieldType::Array)
}

/// The name a nested object prefers: its field's, singular for a list.
fn preferred(f: &Field) -> String {
    pascal(&if f.ty == FieldType::Array {
        singular(&f.name)
    } else {
        f.name.clone()
    })
}

/// Component names for records, pages and nested objects.
struct Names {
    /// Data type → record component.
    records: BTreeMap<String, String>,
    /// (preferred name, shape) → nested component.
    nested: BTreeMap<(String, String), String>,
}

impl Names {
    fn new(model: &DataModel) -> Self {
        let mut taken: BTreeSet<String> = API_COMPONENTS.iter().map(|s| s.to_string()).collect();
        let mut claim = |wanted: String, fallback: &dyn Fn(u32) -> String| -> String {
            let mut name = wanted;
            let mut n = 0;
            while taken.contains(&name) || taken.contains(&format!("{name}Page")) {
                name = fallback(n);
                n += 1;
            }
            taken.insert(name.clone());
            name
        };
        let mut records = BTreeMap::new();
        for dt in &model.types {
            let base = pascal(&singular(&dt.name));
            let name = claim(base.clone(), &|n| match n {
                0 => format!("{base}Record"),
                n => format!("{base}Record{}", n + 1),
            });
            records.insert(dt.name.clone(), name.clone());
        }
        // Pages are claimed with their record (the loop above refuses a name whose page is
        // taken); note them now so that no nested object takes one.
        let pages: Vec<String> = records.values().map(|r| format!("{r}Page")).collect();
        // Every nested object, in model order: its preferred name, shape and first owner.
        let mut seen: BTreeMap<String, Vec<(String, String, usize)>> = BTreeMap::new();
        fn walk(
            fields: &[Field],
            owner: &str,
            seen: &mut BTreeMap<String, Vec<(String, String, usize)>>,
        ) {
            for f in fields.iter().filter(|f| nests(f)) {
                walk(&f.fields, owner, seen);
                let shapes = seen.entry(preferred(f)).or_default();
                let s = shape(&f.fields);
                match shapes.iter_mut().find(|(have, _, _)| *have == s) {
                    Some(entry) => entry.2 += 1,
                    None => shapes.push((s, owner.to_owned(), 1)),
                }
            }
        }
        for dt in &model.types {
            walk(&dt.fields, &records[&dt.name], &mut seen);
        }
        let mut taken_pages = pages;
        let mut nested = BTreeMap::new();
        for (wanted, mut shapes) in seen {
            // the shape most data types use keeps the plain name (the first one on a tie)
            shapes.sort_by_key(|s| std::cmp::Reverse(s.2));
            for (i, (s, owner, _)) in shapes.into_iter().enumerate() {
                let prefixed = format!("{owner}{wanted}");
                let base = if i == 0 && !taken_pages.contains(&wanted) {
                    wanted.clone()
                } else {
                    prefixed.clone()
                };
                let name = claim(base, &|n| match n {
                    0 => prefixed.clone(),
                    n => format!("{prefixed}{}", n + 1),
                });
                taken_pages.push(name.clone());
                nested.insert((wanted.clone(), s), name);
            }
        }
        Names { records, nested }
    }

    fn nested(&self, f: &Field) -> &str {
        &self.nested[&(preferred(f), shape(&f.fields))]
    }
}

fn scalar(ty: FieldType) -> Value {
    match ty {
        FieldType::String => json!({"type": "string"}),
        FieldType::Integer => json!({"type": "integer"}),
        FieldType::Boolean => json!({"type": "boolean"}),
        FieldType::Date => json!({"type": "string", "format": "date"}),
        FieldType::Datetime => json!({"type": "string", "format": "date-time"}),
        FieldType::Money => {
            json!({"type": "string", "format": "decimal", "pattern": "^-?[0-9]+\\.[0-9]{2}$",
            "description": "An exact amount with two decimals, as a string: never a float."})
        }
        FieldType::Decimal => {
            json!({"type": "string", "format": "decimal", "pattern": "^-?[0-9]+\\.[0-9]{6}$",
            "description": "An exact decimal with six places, as a string."})
        }
        FieldType::Object | FieldType::Array => json!({}),
    }
}

/// Builds schemas of records and of nested components into `components`.
struct Builder<'a> {
    names: &'a Names,
    components: &'a mut Map<String, Value>,
}

impl Builder<'_> {
    /// A nested object's component (built the first time it is met) as a reference.
    fn component(&mut self, f: &Field) -> Value {
        let name = self.names.nested(f).to_owned();
        if !self.components.contains_key(&name) {
            // reserve the name before the fields, which may nest further
            self.components.insert(name.clone(), Value::Null);
            let mut schema = self.object(&f.fields);
            if let Some(target) = &f.reference {
                schema["x-references"] = Value::String(target.clone());
            }
            self.components.insert(name.clone(), schema);
        }
        reference(&name)
    }

    fn field(&mut self, f: &Field) -> Value {
        let mut schema = match (f.ty, f.items) {
            (FieldType::Array, Some(item)) => json!({"type": "array", "items": scalar(item)}),
            (FieldType::Array, None) => json!({"type": "array", "items": self.component(f)}),
            (FieldType::Object, _) => self.component(f),
            (ty, _) => scalar(ty),
        };
        let description = match schema.get("description").and_then(Value::as_str) {
            Some(extra) => format!("{} {extra}", f.description),
            None => f.description.clone(),
        };
        if f.nullable {
            schema = nullable(schema);
        }
        schema["description"] = Value::String(description);
        schema
    }

    fn object(&mut self, fields: &[Field]) -> Value {
        let mut props = Map::new();
        for f in fields {
            props.insert(f.name.clone(), self.field(f));
        }
        json!({
            "type": "object",
            "properties": props,
            "required": fields.iter().map(|f| f.name.clone()).collect::<Vec<_>>(),
        })
    }

    fn record(&mut self, dt: &DataType) -> Value {
        let mut schema = self.object(&dt.fields);
        schema["description"] = Value::String(dt.description.clone());
        schema["x-data-type"] = Value::String(dt.name.clone());
        schema["properties"][MODIFIED_DATE] = json!({
            "type": "string", "format": "date-time",
            "description": "When this record's content last changed, as seen by the server (compared with the previous snapshot). Use it for incremental pulls: query=modifiedDate>=…"
        });
        if let Some(required) = schema["required"].as_array_mut() {
            required.push(Value::String(MODIFIED_DATE.into()));
        }
        schema
    }
}

/// A path a query and an ordering may name, and its type: filterable top-level fields, any
/// scalar inside an object (`customerRef.id`), and `modifiedDate`.
fn query_fields(dt: &DataType) -> Vec<(String, FieldType)> {
    fn inside(prefix: &str, fields: &[Field], out: &mut Vec<(String, FieldType)>) {
        for f in fields {
            let path = format!("{prefix}.{}", f.name);
            match f.ty {
                FieldType::Object => inside(&path, &f.fields, out),
                FieldType::Array => {}
                ty => out.push((path, ty)),
            }
        }
    }
    let mut out = Vec::new();
    for f in &dt.fields {
        match f.ty {
            FieldType::Object => inside(&f.name, &f.fields, &mut out),
            FieldType::Array => {}
            ty if f.filterable => out.push((f.name.clone(), ty)),
            _ => {}
        }
    }
    out.push((MODIFIED_DATE.into(), FieldType::Datetime));
    out
}

/// A regular expression matching only queries the server accepts for `dt`: comparisons of a
/// field with a value of its type, joined by `&&` or `||` (at most [`MAX_TERMS`]). The server
/// also accepts `{}` grouping and any spacing, which no regular expression can bound.
fn query_pattern(dt: &DataType) -> String {
    const YEAR: &str = "[1-8][0-9]{3}";
    const MONTH_DAY: &str = "-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])";
    let date = format!("{YEAR}{MONTH_DAY}");
    let time = "T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])";
    let number = "-?[0-9]{1,15}(\\.[0-9]{1,6})?";
    let text = "(\"[ !#-\\[\\]-~]{0,30}\"|[A-Za-z0-9_.:/-]{1,30})";
    let order = "(=|!=|>|<|>=|<=)";
    let mut by_type: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (path, ty) in query_fields(dt) {
        let class = match ty {
            FieldType::String => "text",
            FieldType::Integer => "integer",
            FieldType::Boolean => "boolean",
            FieldType::Date => "date",
            FieldType::Datetime => "datetime",
            FieldType::Money | FieldType::Decimal => "decimal",
            FieldType::Object | FieldType::Array => continue,
        };
        by_type
            .entry(class)
            .or_default()
            .push(path.replace('.', "\\."));
    }
    let comparisons: Vec<String> = by_type
        .iter()
        .map(|(class, paths)| {
            let (ops, value) = match *class {
                "text" => ("(=|!=|~|>|<|>=|<=)".to_owned(), text.to_owned()),
                "integer" => (order.to_owned(), "-?[0-9]{1,15}".to_owned()),
                "boolean" => ("(=|!=)".to_owned(), "(true|false)".to_owned()),
                "date" => (order.to_owned(), date.clone()),
                "datetime" => (order.to_owned(), format!("{date}({time})?")),
                _ => (order.to_owned(), number.to_owned()),
            };
            format!("({}){ops}{value}", paths.join("|"))
        })
        .collect();
    let term = format!("({})", comparisons.join("|"));
    format!("^$|^{term}( ?(&&|\\|\\|) ?{term}){{0,{}}}$", MAX_TERMS - 1)
}

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": reference("Error")}}})
}

fn header(description: &str) -> Value {
    json!({"description": description, "schema": {"type": "string"}})
}

/// A data answer: its body and its caching headers.
fn data_ok(description: &str, schema: &str) -> Value {
    let mut answer = ok(description, schema);
    answer["headers"] = json!({
        "X-Snapshot-Id": header("The snapshot that answered."),
        "ETag": header("A weak tag of this answer (the snapshot and the request): send it as If-None-Match."),
        "Cache-Control": header("private, no-cache from the live snapshot; private, max-age=3600 from a named one."),
    });
    answer
}

fn ok(description: &str, schema: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": reference(schema)}}})
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description,
           "schema": {"type": "string", "minLength": 1, "maxLength": 200}})
}

/// The document.
pub fn document(model: &DataModel) -> Value {
    let names = Names::new(model);
    let mut schemas = Map::new();
    let mut paths = Map::new();
    let company_param = path_param(
        "companyId",
        "The company's id, as POST /companies answered it.",
    );
    let snapshot_param = json!({"name": "snapshot", "in": "query",
        "schema": {"type": "string", "pattern": SNAPSHOT_ID_PATTERN},
        "description": "Read an older loaded snapshot (ids from /companies/{companyId}/snapshots; the latest few are kept loaded) instead of the live one. Every _links href of a page carries the snapshot that answered it, so a walk through the pages is one consistent view."});
    let if_none_match = json!({"name": "If-None-Match", "in": "header", "schema": {"type": "string"},
        "description": "The ETag of an answer you hold: 304 Not Modified while it still stands (no new snapshot went live)."});
    let not_modified = json!({"description": "Not modified: the answer whose ETag was sent still stands.",
        "headers": {"ETag": header("The same tag."), "X-Snapshot-Id": header("The snapshot that answers.")}});
    let mut builder = Builder {
        names: &names,
        components: &mut schemas,
    };
    let mut operation_ids: BTreeSet<String> = BTreeSet::new();
    let mut operation_id = |wanted: String| -> String {
        let mut id = wanted.clone();
        while !operation_ids.insert(id.clone()) {
            id = format!("{id}_records");
        }
        id
    };
    // the API's own operations claim their ids first
    for id in [
        "create_company",
        "list_companies",
        "get_company",
        "get_data_status",
        "list_snapshots",
        "snapshot_published",
        "new_link",
        "request_sync",
        "list_devices",
        "revoke_device",
        "create_webhook",
        "list_webhooks",
        "delete_webhook",
        "list_deliveries",
    ] {
        operation_id(id.into());
    }
    for dt in &model.types {
        let record = names.records[&dt.name].clone();
        let page = format!("{record}Page");
        let record_schema = builder.record(dt);
        builder.components.insert(record.clone(), record_schema);
        builder.components.insert(
            page.clone(),
            json!({
                "type": "object",
                "description": format!("A page of {} records.", dt.name),
                "required": ["results", "pageNumber", "pageSize", "totalResults", "_links"],
                "properties": {
                    "results": {"type": "array", "items": reference(&record)},
                    "pageNumber": {"type": "integer", "minimum": 1},
                    "pageSize": {"type": "integer", "minimum": 1},
                    "totalResults": {"type": "integer", "minimum": 0},
                    "_links": reference("Links"),
                }
            }),
        );
        let fields: Vec<String> = query_fields(dt).into_iter().map(|(p, _)| p).collect();
        let list = json!({
            "get": {
                "operationId": operation_id(format!("list_{}", snake(&dt.name))),
                "summary": format!("List {}", dt.name),
                "description": dt.description,
                "tags": ["Data"],
                "parameters": [
                    company_param,
                    {"name": "query", "in": "query",
                     "schema": {"type": "string", "maxLength": MAX_QUERY_CHARS, "pattern": query_pattern(dt)},
                     "description": format!(
                        "Filter: FIELD OP VALUE joined by && and ||, grouped with {{}}; at most {MAX_TERMS} comparisons. OP is one of = != ~ > < >= <= (~ contains, text only; true/false fields take = and != only). \
                         Values are typed by the field: dates YYYY-MM-DD, date-times RFC 3339 (or a date), exact decimals, whole numbers, true/false; \"quoted\" when they hold spaces or operators. \
                         Fields: {}.", fields.join(", "))},
                    {"name": "orderBy", "in": "query", "schema": {"type": "string", "enum":
                        fields.iter().flat_map(|f| [f.clone(), format!("-{f}")]).collect::<Vec<_>>()},
                     "description": "Sort on a field, descending with a leading '-'; ties by id."},
                    {"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": u32::MAX, "default": 1}},
                    {"name": "pageSize", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": super::api::MAX_PAGE_SIZE, "default": super::api::DEFAULT_PAGE_SIZE}},
                    snapshot_param,
                    if_none_match,
                ],
                "responses": {
                    "200": data_ok("A page of records.", &page),
                    "304": not_modified,
                    "400": error_response("The query, ordering or paging is not valid; the message names the field or token."),
                    "404": error_response("No such company (or not yours), data type, or loaded snapshot; or the company has no data yet."),
                }
            }
        });
        paths.insert(format!("/companies/{{companyId}}/data/{}", dt.name), list);
        paths.insert(
            format!("/companies/{{companyId}}/data/{}/{{recordId}}", dt.name),
            json!({"get": {
                "operationId": operation_id(format!("get_{}", snake(&record))),
                "summary": format!("One record of {}", dt.name),
                "tags": ["Data"],
                "parameters": [company_param, path_param("recordId", "The record's id."), snapshot_param, if_none_match],
                "responses": {
                    "200": data_ok("The record.", &record),
                    "304": not_modified,
                    "400": error_response("The snapshot parameter is not valid."),
                    "404": error_response("No such company, data type, loaded snapshot or record."),
                }
            }}),
        );
    }
    api_components(model, &mut schemas);
    api_paths(&mut paths, &company_param);
    // What every API route can answer besides its own: the server's limits and keys.
    for (path, item) in paths.iter_mut() {
        let data = path.contains("/data/");
        for operation in item
            .as_object_mut()
            .into_iter()
            .flat_map(|m| m.values_mut())
        {
            let Some(responses) = operation
                .get_mut("responses")
                .and_then(Value::as_object_mut)
            else {
                continue;
            };
            let mut add = |code: &str, what: &str| {
                responses
                    .entry(code.to_owned())
                    .or_insert_with(|| error_response(what));
            };
            add("401", "No valid API key (Authorization: Bearer <key>).");
            add(
                "408",
                "The request was not answered within the server's request deadline (a body sent too slowly, or a server too busy): send it again.",
            );
            add(
                "429",
                "Too many requests: this key's rate limit (or, on data routes, its queries running at once until this one's deadline), or too many requests without a valid key from this address. Retry-After says when to come back.",
            );
            if data {
                add(
                    "503",
                    "The query ran past its deadline and was stopped, or the server had no place for it before then: narrow it, or retry after Retry-After.",
                );
            }
            for (code, answer) in responses.iter_mut() {
                let headers = answer
                    .as_object_mut()
                    .map(|a| a.entry("headers").or_insert_with(|| json!({})));
                let Some(Value::Object(headers)) = headers else {
                    continue;
                };
                if code == "429" || code == "503" {
                    headers.insert(
                        "Retry-After".into(),
                        json!({"description": "Seconds to wait before trying again.", "schema": {"type": "integer"}}),
                    );
                }
                if code != "401" {
                    for (name, what) in [
                        (
                            "X-RateLimit-Limit",
                            "Requests a full bucket of this key holds.",
                        ),
                        ("X-RateLimit-Remaining", "Requests this key can make now."),
                        (
                            "X-RateLimit-Reset",
                            "Seconds until the bucket is full again.",
                        ),
                    ] {
                        headers.insert(
                            name.into(),
                            json!({"description": what, "schema": {"type": "integer"}}),
                        );
                    }
                    headers.insert(
                        "RateLimit-Policy".into(),
                        header(
                            "The same, as the IETF draft's field: \"per-key\";q=LIMIT;w=SECONDS.",
                        ),
                    );
                    headers.insert(
                        "RateLimit".into(),
                        header(
                            "The same, as the IETF draft's field: \"per-key\";r=REMAINING;t=RESET.",
                        ),
                    );
                }
            }
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Connector API", "version": format!("{}", crate::model::SCHEMA_VERSION),
            "description": "Sage 50 Accounts data, published by the desktop connector, as data types. Generated from schemas/datatypes/."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "tags": [
            {"name": "Companies", "description": "The companies you connect, their connectors, links and syncs."},
            {"name": "Data", "description": "The data types, a page at a time, from the live snapshot or a named one."},
            {"name": "Webhooks", "description": "Subscriptions to the events in the webhooks section, and their deliveries."},
        ],
        "paths": paths,
        "webhooks": webhook_events(),
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "Your API key."}}
        }
    })
}

/// `schema` or null: a scalar's type becomes `[type, "null"]`, a reference an `anyOf`.
fn nullable(schema: Value) -> Value {
    match schema.get("type").cloned() {
        Some(ty) if schema.get("$ref").is_none() => {
            let mut s = schema;
            s["type"] = json!([ty, "null"]);
            s
        }
        _ => json!({"anyOf": [schema, {"type": "null"}]}),
    }
}

fn time() -> Value {
    json!({"type": "string", "format": "date-time"})
}

fn text() -> Value {
    json!({"type": "string"})
}

/// An object with every property required (nullable ones say so in their type).
fn object(description: &str, props: Value) -> Value {
    let required: Vec<String> = props
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    json!({"type": "object", "description": description, "required": required, "properties": props})
}

fn api_components(model: &DataModel, schemas: &mut Map<String, Value>) {
    let reason_codes: Vec<&str> = crate::protocol::Reason::ALL
        .iter()
        .map(|r| r.code())
        .collect();
    let reason = json!({"type": ["string", "null"], "description": format!("A reason code: {}.", reason_codes.join(", "))});
    let list = |item: &str, what: &str| {
        object(
            what,
            json!({"results": {"type": "array", "items": reference(item)}}),
        )
    };
    let mut add = |name: &str, schema: Value| {
        schemas.insert(name.to_owned(), schema);
    };
    add(
        "Error",
        object(
            "What went wrong.",
            json!({
                "error": {"type": "string", "description": "What is wrong, naming the field or token at fault."},
                "status": {"type": "integer", "description": "The HTTP status."}}),
        ),
    );
    add(
        "Link",
        object(
            "A link within the API.",
            json!({"href": {"type": "string", "description": "A path and query, relative to the server."}}),
        ),
    );
    add(
        "Links",
        json!({"type": "object", "description": "This page, and the next and previous ones when there are.",
            "required": ["self"],
            "properties": {"self": reference("Link"), "next": reference("Link"), "previous": reference("Link")}}),
    );
    let mut company = object(
        "A company you connect: one Sage 50 company, on one customer's PC.",
        json!({
            "id": {"type": "string", "description": "The company id; the connector publishes under it."},
            "name": text(),
            "createdAt": time(),
            "redirectUrl": {"type": ["string", "null"], "description": "Where the link flow sends the Sage user's browser back to, with companyId and status (linked, failed) added."},
            "linkUrl": {"type": "string", "description": "Only when created: the link page to send the Sage user to (single use)."},
            "linkExpiresAt": time(),
            "linked": {"type": "boolean", "description": "Only from GET /companies/{companyId}: whether a connector is linked."},
            "connector": nullable(reference("ConnectorSummary")),
            "lastSyncResult": nullable(reference("SyncResult")),
        }),
    );
    company["required"] = json!(["id", "name", "createdAt", "redirectUrl"]);
    add("Company", company);
    add("CompanyList", list("Company", "Your companies."));
    add(
        "NewCompany",
        json!({"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "\\S"},
            "redirectUrl": {"type": ["string", "null"], "maxLength": 2000, "pattern": REDIRECT_PATTERN,
                "description": "Where the link page sends the Sage user's browser back to: https:// (http:// only for localhost, 127.0.0.1 or [::1]), no spaces."}}}),
    );
    add(
        "CompanyLink",
        object(
            "A link page for the Sage user (single use).",
            json!({"linkUrl": text(), "linkExpiresAt": time()}),
        ),
    );
    add(
        "ConnectorReason",
        object(
            "Why the data is not being kept fresh, as the connector says (reason not_running when it has not checked in for a while), or only warnings.",
            json!({
                "reason": reason, "advice": {"type": ["string", "null"], "description": "What the Sage user should do."},
                "message": {"type": ["string", "null"]}, "check": {"type": ["string", "null"], "description": "The check that failed."},
                "since": {"type": ["string", "null"]},
                "warnings": {"type": "array", "items": {"type": "string"}, "description": "Reason codes of what the connector warns about."}}),
        ),
    );
    add(
        "ConnectorSummary",
        object(
            "The company's linked connector.",
            json!({
                "deviceId": text(), "lastSeenAt": {"type": ["string", "null"], "format": "date-time"},
                "status": {"type": ["object", "null"], "additionalProperties": true, "description": "What the connector said at its last check-in."},
                "why": nullable(reference("ConnectorReason"))}),
        ),
    );
    add(
        "SyncResult",
        object(
            "How the connector's last sync ended.",
            json!({
                "ok": {"type": "boolean"}, "reason": reason, "advice": {"type": ["string", "null"]},
                "message": {"type": ["string", "null"]}, "startedAt": {"type": ["string", "null"]},
                "finishedAt": {"type": ["string", "null"]}, "snapshotId": {"type": ["string", "null"]}}),
        ),
    );
    add(
        "SyncRequested",
        object(
            "A queued sync request.",
            json!({"requestId": text(), "status": {"type": "string", "enum": ["queued"]}}),
        ),
    );
    add(
        "StoreCheck",
        object(
            "The server is looking at the store.",
            json!({"status": text()}),
        ),
    );
    add(
        "DataTypeStatus",
        object(
            "How fresh one data type is.",
            json!({
                "dataType": text(),
                "status": {"type": "string", "enum": ["Fetched", "NotSynced"]},
                "lastSuccessfulSync": {"type": ["string", "null"], "format": "date-time", "description": "When the live snapshot went live."},
                "snapshotId": {"type": ["string", "null"]},
                "sourceExtractedAt": {"type": ["string", "null"], "description": "When the connector read Sage for the live snapshot."},
                "recordCount": {"type": "integer", "minimum": 0},
                "connector": nullable(reference("ConnectorReason"))}),
        ),
    );
    let per_type: Map<String, Value> = model
        .types
        .iter()
        .map(|dt| (dt.name.clone(), reference("DataTypeStatus")))
        .collect();
    add(
        "DataStatus",
        object("Freshness per data type.", Value::Object(per_type)),
    );
    add(
        "Snapshot",
        object(
            "A snapshot the server has seen.",
            json!({
                "snapshotId": text(),
                "status": {"type": "string", "enum": ["live", "superseded", "failed"]},
                "detail": {"type": ["string", "null"], "description": "Why it was refused, when it was."},
                "createdAt": {"type": ["string", "null"], "description": "When the connector made it."},
                "ingestedAt": {"type": "string", "description": "When the server took it in or refused it."},
                "records": {"type": ["object", "null"], "additionalProperties": {"type": "integer"}, "description": "Records per data type, when it went live."}}),
        ),
    );
    add(
        "SnapshotList",
        list("Snapshot", "Every snapshot seen, newest first."),
    );
    add(
        "Device",
        object(
            "A connector linked to a company.",
            json!({
                "id": text(), "companyId": text(), "name": {"type": "string", "description": "The PC's name."},
                "createdAt": time(), "lastSeenAt": {"type": ["string", "null"]}, "revokedAt": {"type": ["string", "null"]},
                "status": {"type": ["object", "null"], "additionalProperties": true, "description": "What the connector said at its last check-in: connectorVersion, os, state, lastSuccessAt, lastError (a reason code)."}}),
        ),
    );
    add("DeviceList", list("Device", "The company's connectors."));
    add(
        "EventType",
        json!({"type": "string", "enum": super::webhooks::EVENT_TYPES}),
    );
    add(
        "NewWebhook",
        json!({"type": "object", "required": ["url"], "properties": {
            "url": {"type": "string", "maxLength": super::api::MAX_URL_CHARS, "pattern": "^https?://[^\\s/?#@\\[\\]]+([/?#][^\\s]*)?$",
                "description": "An http(s) URL whose host resolves to public addresses only; a host that does not resolve, or resolves to a loopback, private or otherwise internal address, is refused with 400."},
            "eventTypes": {"type": ["array", "null"], "minItems": 1, "uniqueItems": true, "items": reference("EventType"), "description": "The events to send; all of them when left out or null."}}}),
    );
    let hook = json!({
        "id": text(), "url": text(), "eventTypes": {"type": "array", "items": reference("EventType")}, "createdAt": time()});
    add("Webhook", object("A webhook subscription.", hook.clone()));
    let mut created = hook;
    created["secret"] = json!({"type": "string", "description": "The signing secret (whsec_…): shown only now. Verify each delivery's webhook-signature with it."});
    add(
        "WebhookCreated",
        object("A new webhook subscription.", created),
    );
    add("WebhookList", list("Webhook", "Your webhooks."));
    add(
        "DeliveryAttempt",
        object(
            "One attempt to deliver.",
            json!({"at": text(), "statusCode": {"type": ["integer", "null"]}, "error": {"type": ["string", "null"]}}),
        ),
    );
    add(
        "Delivery",
        object(
            "One event sent (or being sent) to one webhook.",
            json!({
                "id": {"type": "string", "description": "The webhook-id header, the same on every retry."},
                "webhookId": text(), "eventType": reference("EventType"),
                "status": {"type": "string", "enum": ["pending", "delivered", "failed"]},
                "attempts": {"type": "integer", "minimum": 0}, "createdAt": time(),
                "deliveredAt": {"type": ["string", "null"]}, "lastError": {"type": ["string", "null"]},
                "attemptLog": {"type": "array", "items": reference("DeliveryAttempt")}}),
        ),
    );
    add(
        "DeliveryPage",
        json!({"type": "object", "description": "A page of deliveries, newest first.", "required": ["results", "_links"],
            "properties": {"results": {"type": "array", "items": reference("Delivery")}, "_links": reference("Links")}}),
    );
    add(
        "Changes",
        object(
            "Records added, modified and deleted in a data type.",
            json!({"added": {"type": "integer"}, "modified": {"type": "integer"}, "deleted": {"type": "integer"}}),
        ),
    );
    let event = |ty: &str, description: &str, data: Value| {
        object(
            description,
            json!({"type": {"type": "string", "const": ty}, "timestamp": time(), "data": data}),
        )
    };
    add(
        "DataSyncedEvent",
        event(
            "data.synced",
            "A new snapshot went live: what changed per data type.",
            object(
                "",
                json!({"companyId": text(), "snapshotId": text(),
                "dataTypes": {"type": "object", "additionalProperties": reference("Changes")}}),
            ),
        ),
    );
    let mut failed = json!({"type": "object", "required": ["companyId", "reason", "message", "advice"], "properties": {
        "companyId": text(), "reason": reason, "message": {"type": ["string", "null"]}, "advice": {"type": ["string", "null"]},
        "snapshotId": {"type": "string", "description": "When the server refused a published snapshot (reason snapshot_refused)."},
        "requestId": {"type": ["string", "null"], "description": "When the connector's sync failed: the sync request it answered, if any."},
        "startedAt": {"type": ["string", "null"]}, "finishedAt": {"type": ["string", "null"]}}});
    failed["properties"]["reason"]["description"] = json!(format!(
        "{} Or snapshot_refused.",
        reason["description"].as_str().unwrap_or("")
    ));
    add(
        "SyncFailedEvent",
        event(
            "sync.failed",
            "A sync failed on the connector, or the server refused what it published; the previous data is still served.",
            failed,
        ),
    );
    let state = json!({"type": "string", "enum": ["NotSynced", "Fetched", "Failing"]});
    add(
        "CompanyStatusChangedEvent",
        event(
            "company.status_changed",
            "The company's status changed: NotSynced → Fetched, Fetched ↔ Failing.",
            json!({"type": "object", "required": ["companyId", "from", "to"], "properties": {
                "companyId": text(), "from": state, "to": state, "reason": reason, "previousReason": reason,
                "advice": {"type": ["string", "null"]}, "message": {"type": ["string", "null"]}}}),
        ),
    );
}

fn api_paths(paths: &mut Map<String, Value>, company_param: &Value) {
    let not_yours = || error_response("No such company (or not yours).");
    let webhook_param = path_param("webhookId", "The webhook's id.");
    let mut add = |path: &str, item: Value| {
        paths.insert(path.to_owned(), item);
    };
    add(
        "/companies",
        json!({
            "post": {"operationId": "create_company", "summary": "Create a company", "tags": ["Companies"],
                "description": "Creates a company and a link page (linkUrl) to send the Sage user to.",
                "requestBody": {"required": true, "content": {"application/json": {"schema": reference("NewCompany")}}},
                "responses": {"201": ok("Created, with its link.", "Company"),
                    "400": error_response("No valid name or redirectUrl."),
                    "403": error_response("This client has as many companies as the server allows one client.")}},
            "get": {"operationId": "list_companies", "summary": "Your companies", "tags": ["Companies"],
                "responses": {"200": ok("Your companies.", "CompanyList")}}
        }),
    );
    add(
        "/companies/{companyId}",
        json!({"get": {"operationId": "get_company", "summary": "A company, its connector and last sync", "tags": ["Companies"],
            "parameters": [company_param],
            "responses": {"200": ok("The company.", "Company"), "404": not_yours()}}}),
    );
    add(
        "/companies/{companyId}/dataStatus",
        json!({"get": {"operationId": "get_data_status", "summary": "How fresh each data type is", "tags": ["Companies"],
            "parameters": [company_param],
            "description": "Per data type: status, lastSuccessfulSync, snapshotId, sourceExtractedAt, recordCount, and connector: why the data is not being kept fresh as the connector says, or null.",
            "responses": {"200": ok("Freshness per data type.", "DataStatus"), "404": not_yours()}}}),
    );
    add(
        "/companies/{companyId}/snapshots",
        json!({"get": {"operationId": "list_snapshots", "summary": "Snapshot history", "tags": ["Companies"],
            "parameters": [company_param],
            "description": "Every snapshot the server has seen, newest first: live, superseded or failed (with why).",
            "responses": {"200": ok("Snapshot history.", "SnapshotList"), "404": not_yours()}}}),
    );
    add(
        "/companies/{companyId}/snapshots/published",
        json!({"post": {"operationId": "snapshot_published", "summary": "Look at the store now", "tags": ["Companies"],
            "parameters": [company_param],
            "description": "Tells the server a snapshot was just published: it looks at the store now instead of at its next poll.",
            "responses": {"202": ok("The store is being checked.", "StoreCheck"), "404": not_yours()}}}),
    );
    add(
        "/companies/{companyId}/link",
        json!({"post": {"operationId": "new_link", "summary": "A new link page", "tags": ["Companies"],
            "parameters": [company_param],
            "description": "A new link URL for the company (the last one expired or was used).",
            "responses": {"201": ok("The new link.", "CompanyLink"), "404": not_yours()}}}),
    );
    add(
        "/companies/{companyId}/sync",
        json!({"post": {"operationId": "request_sync", "summary": "Ask for a sync now", "tags": ["Companies"],
            "parameters": [company_param],
            "description": "Queues a sync: a connector that is online starts it within seconds; otherwise at its next check-in. A data.synced or sync.failed event follows.",
            "responses": {"202": ok("Queued.", "SyncRequested"), "404": not_yours()}}}),
    );
    add(
        "/companies/{companyId}/devices",
        json!({"get": {"operationId": "list_devices", "summary": "The company's connectors", "tags": ["Companies"],
            "parameters": [company_param],
            "responses": {"200": ok("The connectors linked to the company.", "DeviceList"), "404": not_yours()}}}),
    );
    add(
        "/companies/{companyId}/devices/{deviceId}",
        json!({"delete": {"operationId": "revoke_device", "summary": "Disconnect a connector", "tags": ["Companies"],
            "parameters": [company_param, path_param("deviceId", "The device's id.")],
            "description": "Revokes a connector: its credential stops working at once and it stops syncing the company.",
            "responses": {"200": ok("The revoked device.", "Device"), "404": error_response("No such company or device.")}}}),
    );
    add(
        "/webhooks",
        json!({
            "post": {"operationId": "create_webhook", "summary": "Subscribe to events", "tags": ["Webhooks"],
                "description": "Events are POSTed as JSON, signed to the Standard Webhooks spec (see the webhooks section). Only public https addresses are reached.",
                "requestBody": {"required": true, "content": {"application/json": {"schema": reference("NewWebhook")}}},
                "responses": {"201": ok("The subscription, with its signing secret (shown only now).", "WebhookCreated"),
                    "400": error_response("No valid url or eventTypes: the message names the field."),
                    "403": error_response("This client has as many webhooks as one client may have.")}},
            "get": {"operationId": "list_webhooks", "summary": "Your webhooks", "tags": ["Webhooks"],
                "responses": {"200": ok("Your webhooks.", "WebhookList")}}
        }),
    );
    add(
        "/webhooks/{webhookId}",
        json!({"delete": {"operationId": "delete_webhook", "summary": "Unsubscribe", "tags": ["Webhooks"],
            "parameters": [webhook_param],
            "description": "Deletes the subscription and its deliveries.",
            "responses": {"204": {"description": "Deleted."}, "404": error_response("No such webhook (or not yours).")}}}),
    );
    add(
        "/webhooks/{webhookId}/deliveries",
        json!({"get": {"operationId": "list_deliveries", "summary": "A webhook's deliveries", "tags": ["Webhooks"],
            "parameters": [webhook_param,
                {"name": "pageSize", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": super::api::MAX_DELIVERIES_PAGE, "default": super::api::DEFAULT_PAGE_SIZE}},
                {"name": "after", "in": "query", "schema": {"type": "string"}, "description": "The last delivery id of the previous page, as the next link gives it."}],
            "description": "Every delivery of the webhook, newest first, with each attempt's status or error.",
            "responses": {"200": ok("A page of deliveries.", "DeliveryPage"),
                "400": error_response("pageSize is not valid."),
                "404": error_response("No such webhook (or not yours).")}}}),
    );
}

/// The `webhooks` section: what each event's POST carries.
fn webhook_events() -> Value {
    let headers = json!([
        {"name": "webhook-id", "in": "header", "required": true, "schema": {"type": "string"},
         "description": "The delivery id: the same on every retry, for deduplication."},
        {"name": "webhook-timestamp", "in": "header", "required": true, "schema": {"type": "string"},
         "description": "Unix seconds when this attempt was signed."},
        {"name": "webhook-signature", "in": "header", "required": true, "schema": {"type": "string"},
         "description": "v1,<base64 HMAC-SHA256 of \"{webhook-id}.{webhook-timestamp}.{body}\" under the subscription's secret, its whsec_ prefix removed and the rest base64-decoded>. Compare in constant time and refuse old timestamps."},
    ]);
    let mut out = Map::new();
    for (event, schema, what) in [
        (
            "data.synced",
            "DataSyncedEvent",
            "A new snapshot of a company went live.",
        ),
        (
            "sync.failed",
            "SyncFailedEvent",
            "A sync failed, or a published snapshot was refused.",
        ),
        (
            "company.status_changed",
            "CompanyStatusChangedEvent",
            "A company's status changed.",
        ),
    ] {
        out.insert(event.into(), json!({"post": {
            "operationId": format!("on_{}", event.replace('.', "_")),
            "summary": what,
            "description": "Answer 2xx within 10 s; anything else is retried with backoff for about a day, then the delivery is marked failed (GET /webhooks/{webhookId}/deliveries). Redirects are not followed.",
            "tags": ["Webhooks"],
            "parameters": headers,
            "requestBody": {"required": true, "content": {"application/json": {"schema": reference(schema)}}},
            "responses": {"2XX": {"description": "Received."}},
        }}));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_singular_pascal_case_and_never_collide() {
        assert_eq!(pascal(&singular("journalEntries")), "JournalEntry");
        assert_eq!(pascal(&singular("address")), "Address");
        assert_eq!(pascal(&singular("lineItems")), "LineItem");
        let model = DataModel::embedded();
        let doc = document(&model);
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        // the API's company and the data type `company` are two components
        assert_eq!(schemas["Company"]["x-data-type"], Value::Null);
        assert_eq!(schemas["CompanyRecord"]["x-data-type"], "company");
        assert_eq!(schemas["Invoice"]["x-data-type"], "invoices");
        // shared nested objects are defined once and referenced
        assert_eq!(
            schemas["Invoice"]["properties"]["customerRef"]["$ref"],
            "#/components/schemas/CustomerRef"
        );
        assert_eq!(
            schemas["CreditNote"]["properties"]["customerRef"]["$ref"],
            "#/components/schemas/CustomerRef"
        );
        // every reference resolves, and nothing is left half-built
        let text = doc.to_string();
        for (name, schema) in schemas {
            assert!(schema.is_object(), "{name}");
        }
        for part in text.split("\"#/components/schemas/").skip(1) {
            let name = &part[..part.find('"').unwrap()];
            assert!(schemas.contains_key(name), "dangling reference to {name}");
        }
        // operation ids are unique
        let mut ids = BTreeSet::new();
        for item in doc["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                let id = op["operationId"].as_str().unwrap();
                assert!(ids.insert(id.to_owned()), "operation id {id} twice");
            }
        }
    }

    #[test]
    fn the_query_pattern_matches_only_what_the_parser_accepts() {
        let model = DataModel::embedded();
        let dt = model.get("invoices").unwrap();
        let re = regex::Regex::new(&query_pattern(dt)).unwrap();
        for accepted in [
            "",
            "issueDate>=2024-01-01",
            "status=Paid && totalAmount>100.5",
            "customerRef.id=ALPHA01 || invoiceNumber~\"INV 1\"",
            "isDeleted=false&&modifiedDate>2025-03-10T09:30:00Z",
        ] {
            assert!(re.is_match(accepted), "{accepted}");
            super::super::query::parse(dt, accepted).unwrap();
        }
        for refused in [
            "issueDate>=2024-13-01",
            "isDeleted>true",
            "totalAmount~1",
            "note=x",
            "status=Paid &&",
        ] {
            assert!(!re.is_match(refused), "{refused}");
            assert!(
                super::super::query::parse(dt, refused).is_err(),
                "{refused}"
            );
        }
    }
}
