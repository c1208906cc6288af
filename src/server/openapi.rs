//! `/openapi.json`: the OpenAPI 3.1 document, generated from the data model (`schemas/`) at
//! start-up, never written by hand. Each data type gets its record schema (field types,
//! descriptions, nesting), its list and record paths, and its filterable fields listed in the
//! `query` and `orderBy` parameters.

use serde_json::{Map, Value, json};

use crate::model::{DataModel, DataType, Field, FieldType};

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
            json!({"type": "string", "format": "decimal", "pattern": "^-?[0-9]+\\.[0-9]{6}$"})
        }
        FieldType::Object | FieldType::Array => json!({}),
    }
}

fn field_schema(f: &Field) -> Value {
    let mut schema = match f.ty {
        FieldType::Object => object(&f.fields),
        FieldType::Array => json!({
            "type": "array",
            "items": match f.items {
                Some(item) => scalar(item),
                None => object(&f.fields),
            }
        }),
        ty => scalar(ty),
    };
    if let Value::Object(map) = &mut schema {
        let text = match map.get("description").and_then(Value::as_str) {
            Some(extra) => format!("{} {extra}", f.description),
            None => f.description.clone(),
        };
        map.insert("description".into(), Value::String(text));
        if f.nullable {
            let ty = map.get("type").cloned().unwrap_or(Value::Null);
            map.insert("type".into(), json!([ty, "null"]));
        }
        if let Some(target) = &f.reference {
            map.insert("x-references".into(), Value::String(target.clone()));
        }
    }
    schema
}

fn object(fields: &[Field]) -> Value {
    let mut props = Map::new();
    for f in fields {
        props.insert(f.name.clone(), field_schema(f));
    }
    json!({
        "type": "object",
        "properties": props,
        "required": fields.iter().filter(|f| !f.nullable).map(|f| f.name.clone()).collect::<Vec<_>>(),
    })
}

fn record(dt: &DataType) -> Value {
    let mut schema = object(&dt.fields);
    schema["description"] = Value::String(dt.description.clone());
    schema["properties"][super::query::MODIFIED_DATE] = json!({
        "type": "string", "format": "date-time",
        "description": "When this record's content last changed, as seen by the server (compared with the previous snapshot). Use it for incremental pulls: query=modifiedDate>=…"
    });
    schema
}

/// Fields a query and an ordering may name at the top level.
fn filterable(dt: &DataType) -> Vec<String> {
    let mut names: Vec<String> = dt
        .fields
        .iter()
        .filter(|f| f.filterable && !matches!(f.ty, FieldType::Object | FieldType::Array))
        .map(|f| f.name.clone())
        .collect();
    names.push(super::query::MODIFIED_DATE.into());
    names
}

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

/// The document.
pub fn document(model: &DataModel) -> Value {
    let mut schemas = Map::new();
    let mut paths = Map::new();
    let company_param =
        json!({"name": "companyId", "in": "path", "required": true, "schema": {"type": "string"}});
    let snapshot_param = json!({"name": "snapshot", "in": "query", "schema": {"type": "string"},
        "description": "Read an older loaded snapshot (ids from /companies/{companyId}/snapshots) instead of the live one."});
    for dt in &model.types {
        let schema_name = dt.name.clone();
        schemas.insert(schema_name.clone(), record(dt));
        let fields = filterable(dt);
        let list = json!({
            "get": {
                "operationId": format!("list_{}", dt.name),
                "summary": format!("List {}", dt.name),
                "description": dt.description,
                "parameters": [
                    company_param,
                    {"name": "query", "in": "query", "schema": {"type": "string", "maxLength": super::query::MAX_QUERY_CHARS},
                     "description": format!(
                        "Filter: FIELD OP VALUE joined by && and ||, grouped with {{}}; OP is one of = != ~ > < >= <= (~ contains, text only); \
                         values typed by the field (dates YYYY-MM-DD, date-times RFC 3339, exact decimals, true/false), \"quoted\" when they hold spaces or operators. \
                         Fields: {}, and any field inside an object with a dot path (customerRef.id).", fields.join(", "))},
                    {"name": "orderBy", "in": "query", "schema": {"type": "string", "enum":
                        fields.iter().flat_map(|f| [f.clone(), format!("-{f}")]).collect::<Vec<_>>()},
                     "description": "Sort on a field, descending with a leading '-'; ties by id."},
                    {"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 1, "default": 1}},
                    {"name": "pageSize", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": super::api::MAX_PAGE_SIZE, "default": super::api::DEFAULT_PAGE_SIZE}},
                    snapshot_param,
                ],
                "responses": {
                    "200": {"description": "A page of records.", "content": {"application/json": {"schema": {
                        "type": "object",
                        "required": ["results", "pageNumber", "pageSize", "totalResults", "_links"],
                        "properties": {
                            "results": {"type": "array", "items": {"$ref": format!("#/components/schemas/{schema_name}")}},
                            "pageNumber": {"type": "integer"},
                            "pageSize": {"type": "integer"},
                            "totalResults": {"type": "integer"},
                            "_links": {"$ref": "#/components/schemas/Links"}
                        }}}}},
                    "400": error_response("The query, ordering or paging is not valid; the message names the field or token."),
                    "401": error_response("No valid API key."),
                    "404": error_response("No such company (or not yours), data type, or snapshot."),
                    "429": error_response("Too many requests for this key: wait Retry-After seconds."),
                }
            }
        });
        paths.insert(format!("/companies/{{companyId}}/data/{}", dt.name), list);
        paths.insert(
            format!("/companies/{{companyId}}/data/{}/{{recordId}}", dt.name),
            json!({"get": {
                "operationId": format!("get_{}", dt.name),
                "summary": format!("One record of {}", dt.name),
                "parameters": [company_param, {"name": "recordId", "in": "path", "required": true, "schema": {"type": "string"}}, snapshot_param],
                "responses": {
                    "200": {"description": "The record.", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema_name}")}}}},
                    "401": error_response("No valid API key."),
                    "404": error_response("No such company, data type or record."),
                }
            }}),
        );
    }
    schemas.insert("Error".into(), json!({"type": "object", "required": ["error", "status"], "properties": {
        "error": {"type": "string", "description": "What is wrong, naming the field or token at fault."},
        "status": {"type": "integer"}}}));
    schemas.insert(
        "Links".into(),
        json!({"type": "object", "properties": {
        "self": {"type": "object", "properties": {"href": {"type": "string"}}},
        "next": {"type": "object", "properties": {"href": {"type": "string"}}},
        "previous": {"type": "object", "properties": {"href": {"type": "string"}}}}}),
    );
    schemas.insert("Company".into(), json!({"type": "object", "required": ["id", "name", "createdAt"], "properties": {
        "id": {"type": "string", "description": "The company id; the connector publishes under it (connector sync --company ID)."},
        "name": {"type": "string"}, "createdAt": {"type": "string", "format": "date-time"},
        "redirectUrl": {"type": ["string", "null"], "description": "Where the link flow sends the Sage user's browser back to, with companyId and status (linked, failed) added."},
        "linkUrl": {"type": "string", "description": "Only when created: the link page to send the Sage user to (single use)."},
        "linkExpiresAt": {"type": "string", "format": "date-time"}}}));
    schemas.insert("Device".into(), json!({"type": "object", "required": ["id", "companyId", "name", "createdAt"], "properties": {
        "id": {"type": "string"}, "companyId": {"type": "string"}, "name": {"type": "string", "description": "The PC's name."},
        "createdAt": {"type": "string", "format": "date-time"}, "lastSeenAt": {"type": ["string", "null"]},
        "revokedAt": {"type": ["string", "null"]},
        "status": {"description": "What the connector said at its last check-in: connectorVersion, os, state, lastSuccessAt, lastError (a reason code)."}}}));
    paths.insert("/companies".into(), json!({
        "post": {"operationId": "create_company", "summary": "Create a company",
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 200}, "redirectUrl": {"type": "string", "description": "https:// (http:// only for localhost)"}}}}}},
            "responses": {"201": {"description": "Created.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Company"}}}}, "400": error_response("No valid name.")}},
        "get": {"operationId": "list_companies", "summary": "Your companies",
            "responses": {"200": {"description": "Your companies.", "content": {"application/json": {"schema": {"type": "object", "properties": {"results": {"type": "array", "items": {"$ref": "#/components/schemas/Company"}}}}}}}}}
    }));
    paths.insert("/companies/{companyId}".into(), json!({"get": {"operationId": "get_company", "parameters": [company_param],
        "responses": {"200": {"description": "The company.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Company"}}}}, "404": error_response("No such company (or not yours).")}}}));
    paths.insert("/companies/{companyId}/dataStatus".into(), json!({"get": {"operationId": "data_status", "parameters": [company_param],
        "description": "Per data type: status (Fetched, NotSynced), lastSuccessfulSync, snapshotId, sourceExtractedAt, recordCount, and connector: why the data is not being kept fresh as the connector says (reason code, advice, message, the check that failed, since, warnings; reason not_running when it has not checked in for 5 minutes), or null.",
        "responses": {"200": {"description": "Freshness per data type."}, "404": error_response("No such company (or not yours).")}}}));
    paths.insert("/companies/{companyId}/snapshots".into(), json!({"get": {"operationId": "list_snapshots", "parameters": [company_param],
        "description": "Every snapshot the server has seen, newest first: live, superseded or failed (with why).",
        "responses": {"200": {"description": "Snapshot history."}, "404": error_response("No such company (or not yours).")}}}));
    paths.insert("/companies/{companyId}/snapshots/published".into(), json!({"post": {"operationId": "snapshot_published", "parameters": [company_param],
        "description": "Tells the server a snapshot was just published: it looks at the store now instead of at its next poll.",
        "responses": {"202": {"description": "The store is being checked."}, "404": error_response("No such company (or not yours).")}}}));
    paths.insert("/companies/{companyId}/link".into(), json!({"post": {"operationId": "new_link", "parameters": [company_param],
        "description": "A new link URL for the company (the last one expired or was used).",
        "responses": {"201": {"description": "linkUrl and linkExpiresAt."}, "404": error_response("No such company (or not yours).")}}}));
    paths.insert("/companies/{companyId}/sync".into(), json!({"post": {"operationId": "request_sync", "parameters": [company_param],
        "description": "Queues a sync: a connector that is online starts it within seconds; otherwise at its next check-in.",
        "responses": {"202": {"description": "requestId and status queued."}, "404": error_response("No such company (or not yours).")}}}));
    paths.insert("/companies/{companyId}/devices".into(), json!({"get": {"operationId": "list_devices", "parameters": [company_param],
        "responses": {"200": {"description": "The connectors linked to the company.", "content": {"application/json": {"schema": {"type": "object", "properties": {"results": {"type": "array", "items": {"$ref": "#/components/schemas/Device"}}}}}}}, "404": error_response("No such company (or not yours).")}}}));
    paths.insert("/companies/{companyId}/devices/{deviceId}".into(), json!({"delete": {"operationId": "revoke_device",
        "parameters": [company_param, {"name": "deviceId", "in": "path", "required": true, "schema": {"type": "string"}}],
        "description": "Revokes a connector: its credential stops working at once and it stops syncing the company.",
        "responses": {"200": {"description": "The revoked device.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Device"}}}}, "404": error_response("No such company or device.")}}}));
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
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Connector API", "version": format!("{}", crate::model::SCHEMA_VERSION),
            "description": "Sage 50 Accounts data, published by the desktop connector, as data types. Generated from schemas/datatypes/."},
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "Your API key."}}
        }
    })
}
