//! The committed machine-readable API files equal what the code generates:
//! `docs/openapi.json` and `docs/schemas/*.json` cannot go stale.
//! After a change of the API types, regenerate them with
//! `SWITCHBOARD_WRITE_API_DOCS=1 cargo test --test it api_docs::` and commit the result.

use std::path::PathBuf;

fn docs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs")
}

/// Compares (or, with `SWITCHBOARD_WRITE_API_DOCS=1`, writes) one generated file.
fn check(path: PathBuf, generated: &str) {
    if std::env::var_os("SWITCHBOARD_WRITE_API_DOCS").is_some() {
        std::fs::write(&path, generated).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} differs from what the code generates; run \
         `SWITCHBOARD_WRITE_API_DOCS=1 cargo test --test it api_docs::` and commit the result",
        path.display()
    );
}

#[test]
fn openapi_json_is_current() {
    check(
        docs().join("openapi.json"),
        &switchboard::http::api_docs::openapi_json(),
    );
}

#[test]
fn frame_schemas_are_current() {
    let dir = docs().join("schemas");
    let schemas = switchboard::http::api_docs::frame_schemas();
    for (name, text) in &schemas {
        check(dir.join(name), text);
    }
    // No stale schema file of a frame type that is gone.
    let mut committed: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    committed.sort();
    let mut generated: Vec<String> = schemas.iter().map(|(n, _)| n.to_string()).collect();
    generated.sort();
    assert_eq!(committed, generated, "files in docs/schemas/");
}

/// The document is OpenAPI 3.1, names the security schemes and the error body,
/// and lists every route of the router.
#[test]
fn openapi_covers_the_api() {
    let doc: serde_json::Value =
        serde_json::from_str(&switchboard::http::api_docs::openapi_json()).expect("JSON");
    assert!(doc["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.1")));
    for scheme in ["admin_token", "adapter_key", "agent_jwt", "agent_jwt_query"] {
        assert!(
            doc["components"]["securitySchemes"][scheme].is_object(),
            "{scheme}"
        );
    }
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    let routes = [
        ("post", "/v1/conversations/{id}/messages"),
        ("post", "/v1/inbound"),
        ("get", "/v1/ws"),
        ("post", "/v1/admin/import"),
        ("patch", "/v1/admin/users/{id}"),
        ("delete", "/v1/admin/channels/{id}"),
        ("put", "/v1/admin/contacts/{id}"),
        ("get", "/v1/admin/conversations/{id}"),
        ("post", "/v1/admin/conversations/{id}/assign"),
        (
            "delete",
            "/v1/admin/conversations/{id}/collaborators/{user}",
        ),
        ("get", "/v1/admin/conversations/{id}/messages"),
        ("get", "/v1/admin/conversations/{id}/access/{user}"),
        ("post", "/v1/admin/bulk/assign"),
        ("put", "/v1/admin/teams/{id}"),
        ("put", "/v1/admin/workspaces/{id}"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("get", "/v1/openapi.json"),
    ];
    for (method, path) in routes {
        assert!(doc["paths"][path][method].is_object(), "{method} {path}");
    }
}

/// Every path the router serves is in the document: a route added to
/// `src/http/mod.rs` or `src/http/admin.rs` without its `#[utoipa::path]` in
/// `src/http/api_docs.rs` fails here.
#[test]
fn every_routed_path_is_documented() {
    let doc: serde_json::Value =
        serde_json::from_str(&switchboard::http::api_docs::openapi_json()).expect("JSON");
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let mut routed = Vec::new();
    for (file, prefix) in [("mod.rs", ""), ("admin.rs", "/v1/admin")] {
        let text = std::fs::read_to_string(src.join(file)).expect("router source");
        for part in text.split(".route(").skip(1) {
            // The first string literal after `.route(` (possibly on the next line).
            let path = part
                .trim_start()
                .strip_prefix('"')
                .and_then(|rest| rest.split('"').next());
            if let Some(path) = path {
                routed.push(format!("{prefix}{path}"));
            }
        }
    }
    assert!(
        routed.len() > 20,
        "routes not found in the sources: {routed:?}"
    );
    let missing: Vec<&String> = routed
        .iter()
        .filter(|p| !doc["paths"][p.as_str()].is_object())
        .collect();
    assert!(
        missing.is_empty(),
        "routed but not in openapi.json: {missing:?}"
    );
}

/// Every error code the sources give an `ApiError` is in the document's
/// `ErrorCode`: a new code without its enum variant in `src/http/api_docs.rs` fails here.
#[test]
fn every_error_code_is_documented() {
    let doc: serde_json::Value =
        serde_json::from_str(&switchboard::http::api_docs::openapi_json()).expect("JSON");
    let documented: Vec<&str> = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .expect("ErrorCode enum")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("src").flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    let mut codes = std::collections::BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        let is_error_rs = f.ends_with("error.rs");
        let calls = text.split("ApiError::new(").skip(1);
        let own = text.split("Self::new(").skip(1).filter(|_| is_error_rs);
        // The code is the first string literal of the call (after the status).
        for part in calls.chain(own) {
            if let Some(code) = part.split('"').nth(1) {
                codes.insert(code.to_owned());
            }
        }
        for part in text.split("code: \"").skip(1).filter(|_| is_error_rs) {
            if let Some(code) = part.split('"').next() {
                codes.insert(code.to_owned());
            }
        }
    }
    assert!(
        codes.len() >= 8,
        "codes not found in the sources: {codes:?}"
    );
    let missing: Vec<&String> = codes
        .iter()
        .filter(|c| !documented.contains(&c.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "error codes not in openapi.json ErrorCode: {missing:?}"
    );
}
