//! The admin API's read side on the real binary: paginated lists per
//! workspace with filters, the export (and its round trip through a replace
//! import), and the audit log of admin changes.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::gateway::*;

/// A workspace's world; `w2` shares ids with `w1`, so a list that leaked
/// across workspaces would show. (One world per workspace: an import checks
/// ids for uniqueness across the whole document.)
fn world_of(ws: &str) -> Value {
    let mut users: Vec<Value> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|id| json!({"id": id, "workspace": ws, "teams": if *id < "c" { ["t1"] } else { ["t2"] }}))
        .collect();
    if ws == "w2" {
        users.push(json!({"id": "only-w2", "workspace": "w2"}));
        return json!({
            "users": users,
            "channels": [{"id": "sms", "workspace": "w2"}],
            "contacts": [{"id": "k1", "workspace": "w2"}],
            "conversations": [
                {"id": "v1", "workspace": "w2", "channel": "sms", "contact": "k1", "assignee": "a", "status": "closed"}
            ]
        });
    }
    json!({
        "users": users,
        "channels": [
            {"id": "sms", "workspace": ws, "team": "t3"},
            {"id": "web", "workspace": ws}
        ],
        "contacts": [{"id": "k1", "workspace": ws}, {"id": "k2", "workspace": ws}],
        "conversations": [
            {"id": "v1", "workspace": ws, "channel": "sms", "contact": "k1", "assignee": "a", "team": "t1"},
            {"id": "v2", "workspace": ws, "channel": "sms", "contact": "k2", "status": "closed"},
            {"id": "v3", "workspace": ws, "channel": "web", "contact": "k1", "assignee": "b", "private": true},
            {"id": "v4", "workspace": ws, "kind": "direct", "participants": ["a", "b"]}
        ]
    })
}

async fn import_both(srv: &Server) {
    srv.import(&world_of("w1")).await;
    srv.import(&world_of("w2")).await;
}

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {page}"))
        .iter()
        .map(|i| i["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Follows `next_cursor` to the end; the ids of every page.
async fn all_pages(srv: &Server, path: &str, limit: usize) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut p = format!("{path}&limit={limit}");
        if let Some(c) = &cursor {
            p.push_str(&format!("&cursor={}", urlencode(c)));
        }
        let page = srv.admin_ok(Method::GET, &p, None).await;
        pages.push(ids(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => {
                assert!(page["next_cursor"].is_null(), "{page}");
                return pages;
            }
        }
        assert!(pages.len() < 100, "pagination does not end");
    }
}

fn assert_422(status: StatusCode, body: &Value, field: &str) {
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "invalid_field", "{body}");
    assert_eq!(body["error"]["field"], field, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_are_per_workspace_paginated_by_id() {
    let srv = Server::start().await;
    import_both(&srv).await;

    assert_eq!(
        all_pages(&srv, "/users?workspace=w1", 2).await,
        [vec!["a", "b"], vec!["c", "d"], vec!["e"]]
    );
    assert_eq!(
        all_pages(&srv, "/users?workspace=w2", 1000).await,
        [vec!["a", "b", "c", "d", "e", "only-w2"]]
    );
    // An exact last page says there is nothing more only on the next one.
    let page = srv
        .admin_ok(Method::GET, "/users?workspace=w1&limit=5", None)
        .await;
    assert_eq!(ids(&page).len(), 5);
    assert!(page["next_cursor"].is_null(), "{page}");
    // Items are whole entities in the world format.
    let page = srv
        .admin_ok(Method::GET, "/users?workspace=w2&cursor=e", None)
        .await;
    assert_eq!(page["items"][0]["id"], "only-w2");
    assert_eq!(page["items"][0]["workspace"], "w2");
    assert_eq!(page["items"][0]["role"], "staff");

    assert_eq!(
        all_pages(&srv, "/channels?workspace=w1", 1).await,
        [vec!["sms"], vec!["web"]]
    );
    assert_eq!(
        all_pages(&srv, "/contacts?workspace=w2", 10).await,
        [vec!["k1"]]
    );
    let teams = srv.admin_ok(Method::GET, "/teams?workspace=w1", None).await;
    assert_eq!(
        teams["items"],
        json!([
            {"id": "t1", "members": ["a", "b"]},
            {"id": "t2", "members": ["c", "d", "e"]},
            {"id": "t3", "members": []}
        ]),
        "teams are named by users, channels and conversations"
    );
    assert_eq!(
        all_pages(&srv, "/teams?workspace=w1", 2).await,
        [vec!["t1", "t2"], vec!["t3"]]
    );

    // Conversations carry their seq, and filter.
    let convs = |q: &'static str| {
        let srv = &srv;
        async move {
            ids(&srv
                .admin_ok(
                    Method::GET,
                    &format!("/conversations?workspace=w1{q}"),
                    None,
                )
                .await)
        }
    };
    assert_eq!(convs("").await, ["v1", "v2", "v3", "v4"]);
    assert_eq!(convs("&status=closed").await, ["v2"]);
    assert_eq!(convs("&status=open").await, ["v1", "v3", "v4"]);
    assert_eq!(convs("&assignee=a").await, ["v1"]);
    assert_eq!(convs("&assigned=false").await, ["v2", "v4"]);
    assert_eq!(convs("&channel=sms").await, ["v1", "v2"]);
    assert_eq!(convs("&contact=k1").await, ["v1", "v3"]);
    assert_eq!(convs("&team=t1").await, ["v1"]);
    assert_eq!(convs("&private=true").await, ["v3"]);
    assert_eq!(convs("&kind=direct").await, ["v4"]);
    assert_eq!(convs("&channel=sms&status=open&assignee=a").await, ["v1"]);
    let page = srv
        .admin_ok(Method::GET, "/conversations?workspace=w1&limit=1", None)
        .await;
    assert_eq!(page["items"][0]["seq"], 0, "{page}");
    assert_eq!(page["next_cursor"], "v1");
    assert_eq!(
        all_pages(&srv, "/conversations?workspace=w1&status=open", 2).await,
        [vec!["v1", "v3"], vec!["v4"]]
    );
    // The other workspace's v1 is its own.
    let w2 = srv
        .admin_ok(Method::GET, "/conversations?workspace=w2", None)
        .await;
    assert_eq!(ids(&w2), ["v1"]);
    assert_eq!(w2["items"][0]["status"], "closed");

    // Refusals name the field.
    for (path, field) in [
        ("/users", "workspace"),
        ("/conversations?workspace=w1&status=pending", "status"),
        ("/conversations?workspace=w1&kind=email", "kind"),
        ("/conversations?workspace=w1&private=yes", "private"),
        ("/conversations?workspace=w1&assigned=1", "assigned"),
        ("/conversations?workspace=w1&assignee=nobody", "assignee"),
        // A user of another workspace is unknown here.
        ("/conversations?workspace=w1&assignee=only-w2", "assignee"),
        ("/conversations?workspace=w1&channel=fax", "channel"),
        ("/conversations?workspace=w1&contact=k9", "contact"),
        ("/conversations?workspace=w1&colour=red", "colour"),
        ("/users?workspace=w1&status=open", "status"),
        ("/users?workspace=w1&limit=0", "limit"),
        ("/users?workspace=w1&limit=1001", "limit"),
        ("/users?workspace=w1&limit=ten", "limit"),
        ("/users?workspace=w1&limit=1&limit=2", "limit"),
        ("/users?workspace=w%7Bx%7D", "workspace"),
    ] {
        let (status, body) = srv.admin(Method::GET, path, None).await;
        assert_422(status, &body, field);
    }
    // A workspace nobody loaded has nothing.
    let page = srv
        .admin_ok(Method::GET, "/users?workspace=nope", None)
        .await;
    assert_eq!(page, json!({"items": [], "next_cursor": null}));
    // Lists need the admin token.
    let (status, _) = srv
        .request(
            Method::GET,
            "/v1/admin/users?workspace=w1",
            Some("wrong"),
            &[],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_only_workspace_needs_no_name() {
    let srv = Server::start().await;
    let (status, body) = srv.admin(Method::GET, "/users", None).await;
    assert_422(status, &body, "workspace");
    srv.import(&json!({"users": [{"id": "s1"}, {"id": "s2"}]}))
        .await;
    // Looking up a workspace nobody loaded does not make it a second one.
    srv.admin_ok(Method::GET, "/workspaces/typo", None).await;
    let page = srv.admin_ok(Method::GET, "/users?limit=1", None).await;
    assert_eq!(ids(&page), ["s1"]);
    assert_eq!(page["next_cursor"], "s1");
    let world = srv.admin_ok(Method::GET, "/export", None).await;
    assert_eq!(world["users"].as_array().map(Vec::len), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_replace_import_round_trips() {
    let srv = Server::start().await;
    srv.import(&world_of("w2")).await;
    let mut world = world_of("w1");
    world["users"].as_array_mut().expect("users").push(json!({
        "id": "m", "workspace": "w1", "role": "team_admin", "permissions": ["chats", "view_all"],
        "manager": "a", "visibility_groups": ["eu"], "internal": false,
        "schedule": {"tz": "Europe/Paris", "days": ["mon", "tue"], "hours": "09:00-17:00"}
    }));
    world["channels"].as_array_mut().expect("channels").push(json!({
        "id": "wa", "workspace": "w1", "visibility": "own",
        "grants": [{"subject": "user:m", "level": "full"}, {"subject": "role:staff", "level": "read_only"}],
        "auto_assign": {"enabled": true, "pool": ["user:a", "role:staff"], "max_open_per_agent": 3}
    }));
    world["conversations"]
        .as_array_mut()
        .expect("conversations")
        .push(json!({
            "id": "item", "workspace": "w1", "kind": "item", "author": "m",
            "item_acl": {"a": "read_write"}, "collaborators": ["c"]
        }));
    srv.import(&world).await;
    srv.admin_ok(
        Method::PUT,
        "/workspaces/w1",
        Some(json!({"edit_window_secs": 42, "group_create": "admins", "direct_messages": "internal_only"})),
    )
    .await;
    // A conversation opened by an adapter has a thread key: it round-trips too.
    let payload = json!({"channel": "web", "thread": "+1555", "contact": "k2", "body": "hi"});
    let (_, inbound) = srv
        .request(
            Method::POST,
            "/v1/inbound?workspace=w1",
            Some(ADAPTER_KEY),
            &[],
            Some(serde_json::to_vec(&payload).expect("json")),
        )
        .await;
    assert!(inbound["conversation"].is_string(), "{inbound}");

    let first = srv
        .admin_ok(Method::GET, "/export?workspace=w1", None)
        .await;
    assert_eq!(
        first["settings"],
        json!([{"id": "w1", "edit_window_secs": 42, "group_create": "admins", "direct_messages": "internal_only"}])
    );
    assert_eq!(
        ids(&json!({"items": first["users"]})),
        ["a", "b", "c", "d", "e", "m"]
    );
    assert_eq!(first["conversations"].as_array().map(Vec::len), Some(6));
    assert!(
        first["conversations"]
            .as_array()
            .expect("conversations")
            .iter()
            .any(|c| c["thread"] == "+1555"),
        "{first}"
    );
    let w2_before = srv
        .admin_ok(Method::GET, "/export?workspace=w2", None)
        .await;

    // Wipe w1 (a replace with something else, settings reset), then restore it.
    srv.admin_ok(
        Method::POST,
        "/import?mode=replace",
        Some(json!({
            "users": [{"id": "z", "workspace": "w1"}],
            "settings": [{"id": "w1"}]
        })),
    )
    .await;
    let wiped = srv
        .admin_ok(Method::GET, "/export?workspace=w1", None)
        .await;
    assert_eq!(ids(&json!({"items": wiped["users"]})), ["z"]);
    assert_eq!(wiped["settings"][0]["edit_window_secs"], 300);

    let answer = srv
        .admin_ok(Method::POST, "/import?mode=replace", Some(first.clone()))
        .await;
    assert_eq!(answer["removed"]["w1"]["users"], json!(["z"]), "{answer}");
    let second = srv
        .admin_ok(Method::GET, "/export?workspace=w1", None)
        .await;
    assert_eq!(
        first, second,
        "export → replace import → export is the identity"
    );
    assert_eq!(
        srv.admin_ok(Method::GET, "/workspaces/w1", None).await["edit_window_secs"],
        42,
        "settings came back with the import"
    );
    // The other workspace was not touched.
    assert_eq!(
        srv.admin_ok(Method::GET, "/export?workspace=w2", None)
            .await,
        w2_before
    );

    // Settings of a world are validated with it.
    let (status, body) = srv
        .admin(
            Method::POST,
            "/import",
            Some(json!({"settings": [{"id": "w1"}, {"id": "w1"}]})),
        )
        .await;
    assert_422(status, &body, "settings[1].id");
    let (status, body) = srv
        .admin(
            Method::POST,
            "/import",
            Some(json!({"settings": [{"id": "w1", "group_create": "nobody"}]})),
        )
        .await;
    assert!(
        status == StatusCode::UNPROCESSABLE_ENTITY || status == StatusCode::BAD_REQUEST,
        "{status} {body}"
    );
    assert_eq!(
        srv.admin_ok(Method::GET, "/workspaces/w1", None).await["edit_window_secs"],
        42,
        "a refused import changes nothing"
    );
    // Unknown workspace; export takes no page parameters.
    let (status, body) = srv.admin(Method::GET, "/export?workspace=nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = srv
        .admin(Method::GET, "/export?workspace=w1&limit=5", None)
        .await;
    assert_422(status, &body, "limit");
}

/// An admin call with the caller's headers.
async fn admin_with(
    srv: &Server,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (StatusCode, Value) {
    let body = body.map(|b| serde_json::to_vec(&b).expect("json"));
    srv.request(
        method,
        &format!("/v1/admin{path}"),
        Some(ADMIN_TOKEN),
        headers,
        body,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_changes_are_audited_per_workspace() {
    let srv = Server::start().await;
    let t0 = crate::support::gateway::now_secs() * 1000;
    let who = [("x-request-id", "req-1"), ("user-agent", "ops-cli/2")];
    srv.import(&world_of("w2")).await;
    let (status, _) = admin_with(
        &srv,
        Method::POST,
        "/import?mode=replace",
        &who,
        Some(world_of("w1")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let w1 = |path: &str| format!("{path}?workspace=w1");
    let calls: Vec<(Method, String, Option<Value>, &str)> = vec![
        (Method::PUT, w1("/users/f"), Some(json!({})), "user.put"),
        (
            Method::PATCH,
            w1("/users/f"),
            Some(json!({"teams": ["t1"]})),
            "user.patch",
        ),
        (
            Method::PUT,
            w1("/channels/fax"),
            Some(json!({})),
            "channel.put",
        ),
        (
            Method::PATCH,
            w1("/channels/fax"),
            Some(json!({"team": "t1"})),
            "channel.patch",
        ),
        (
            Method::PUT,
            w1("/contacts/k3"),
            Some(json!({})),
            "contact.put",
        ),
        (
            Method::PATCH,
            w1("/contacts/k3"),
            Some(json!({"known": false})),
            "contact.patch",
        ),
        (
            Method::PUT,
            w1("/conversations/v9"),
            Some(json!({"channel": "fax", "contact": "k3"})),
            "conversation.put",
        ),
        (
            Method::PATCH,
            w1("/conversations/v9"),
            Some(json!({"team": "t1"})),
            "conversation.patch",
        ),
        (
            Method::POST,
            w1("/conversations/v9/assign"),
            Some(json!({"assignee": "a"})),
            "conversation.assign",
        ),
        (
            Method::POST,
            w1("/conversations/v9/collaborators"),
            Some(json!({"user": "b"})),
            "conversation.collaborator_add",
        ),
        (
            Method::DELETE,
            w1("/conversations/v9/collaborators/b"),
            None,
            "conversation.collaborator_remove",
        ),
        (
            Method::POST,
            w1("/conversations/v9/private"),
            Some(json!({"private": true})),
            "conversation.private",
        ),
        (
            Method::POST,
            w1("/conversations/v9/close"),
            None,
            "conversation.close",
        ),
        (
            Method::POST,
            w1("/conversations/v9/reopen"),
            None,
            "conversation.reopen",
        ),
        (
            Method::POST,
            w1("/bulk/assign"),
            Some(json!({"conversations": ["v9", "v1", "gone"], "assignee": "b"})),
            "bulk.assign",
        ),
        (
            Method::PUT,
            w1("/teams/t9"),
            Some(json!({"members": ["c"]})),
            "team.put",
        ),
        (
            Method::PUT,
            "/workspaces/w1".into(),
            Some(json!({"edit_window_secs": 60})),
            "workspace.put",
        ),
        (
            Method::DELETE,
            w1("/conversations/v9"),
            None,
            "conversation.delete",
        ),
        (Method::DELETE, w1("/contacts/k3"), None, "contact.delete"),
        (Method::DELETE, w1("/channels/fax"), None, "channel.delete"),
        (Method::DELETE, w1("/users/f"), None, "user.delete"),
    ];
    for (method, path, body, _) in &calls {
        let (status, answer) = admin_with(&srv, method.clone(), path, &who, body.clone()).await;
        assert!(status.is_success(), "{method} {path}: {status} {answer}");
    }
    // Refused and read-only calls leave no entry.
    let (status, _) = srv
        .admin(
            Method::PUT,
            "/users/g?workspace=w1",
            Some(json!({"manager": "nobody"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    srv.admin_ok(Method::GET, "/users/a?workspace=w1", None)
        .await;
    srv.admin_ok(Method::GET, "/users?workspace=w1", None).await;

    let log = srv
        .admin_ok(Method::GET, "/audit?workspace=w1&limit=1000", None)
        .await;
    let items = log["items"].as_array().expect("items");
    assert!(log["next_cursor"].is_null(), "{log}");
    let actions: Vec<&str> = items.iter().filter_map(|e| e["action"].as_str()).collect();
    let mut expected: Vec<&str> = calls.iter().map(|c| c.3).collect();
    expected.insert(0, "import");
    expected.reverse();
    assert_eq!(actions, expected, "every change, newest first");
    let t1 = crate::support::gateway::now_secs() * 1000 + 1000;
    for e in items {
        assert_eq!(
            e["who"],
            json!({"actor": "admin", "request_id": "req-1", "user_agent": "ops-cli/2"}),
            "{e}"
        );
        let ts = e["ts"].as_u64().expect("ts");
        assert!(ts >= t0 && ts <= t1, "{e}");
    }
    let entry = |action: &str| {
        items
            .iter()
            .find(|e| e["action"] == action)
            .cloned()
            .unwrap_or_else(|| panic!("no {action}"))
    };
    assert_eq!(entry("user.put")["targets"], json!(["f"]));
    assert_eq!(
        entry("conversation.assign")["detail"],
        json!({"assignee": "a"})
    );
    assert_eq!(
        entry("bulk.assign")["targets"],
        json!(["v9", "v1"]),
        "only what was assigned"
    );
    assert_eq!(entry("team.put")["detail"], json!({"members": ["c"]}));
    assert_eq!(entry("workspace.put")["detail"]["edit_window_secs"], 60);
    let import = entry("import");
    assert_eq!(import["detail"]["mode"], "replace");
    assert_eq!(import["detail"]["users"], 5);
    assert_eq!(import["detail"]["conversations"], 4);
    assert_eq!(
        import["detail"]["removed"],
        json!({"users": 0, "channels": 0, "contacts": 0, "conversations": 0})
    );

    // Pages follow the cursor, newest first, without overlap.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = srv
            .admin_ok(
                Method::GET,
                &format!("/audit?workspace=w1&limit=5&cursor={}", urlencode(&cursor)),
                None,
            )
            .await;
        let items = page["items"].as_array().expect("items");
        seen.extend(
            items
                .iter()
                .filter_map(|e| e["action"].as_str().map(str::to_owned)),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, expected);

    // The other workspace saw only its own changes (here without the
    // caller's headers: there were none).
    srv.admin_ok(Method::POST, "/conversations/v1/close?workspace=w2", None)
        .await;
    let w2 = srv.admin_ok(Method::GET, "/audit?workspace=w2", None).await;
    let w2_actions: Vec<&str> = w2["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(w2_actions, ["conversation.close", "import"]);
    assert_eq!(w2["items"][0]["who"]["actor"], "admin");
    assert_eq!(w2["items"][0]["targets"], json!(["v1"]));

    for (path, field) in [
        ("/audit?workspace=w1&cursor=yesterday", "cursor"),
        ("/audit?workspace=w1&limit=0", "limit"),
        ("/audit", "workspace"),
    ] {
        let (status, body) = srv.admin(Method::GET, path, None).await;
        assert_422(status, &body, field);
    }
}
