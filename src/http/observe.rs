//! One log line and the HTTP metrics per request.
//!
//! The route is the matched pattern (`/v1/conversations/{id}/messages`), never
//! the raw path: ids stay out of the metric labels and the log's `route`
//! field. Workspace and user are logged where known: `?workspace=` of the
//! request, or a [`LogContext`] a handler put on its response (the WebSocket
//! upgrade does, once the token is verified).

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

/// Who a request acted for, set by handlers that know it.
#[derive(Clone, Debug)]
pub struct LogContext {
    pub workspace: String,
    pub user: String,
}

/// Probes and scrapes are logged at debug level: they are frequent and say
/// nothing about clients.
fn is_probe(route: &str) -> bool {
    matches!(route, "/healthz" | "/readyz" | "/metrics")
}

fn workspace_param(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("workspace="))
        .filter(|w| !w.is_empty())
}

pub async fn observe(req: Request, next: Next) -> Response {
    let start = Instant::now();
    // A reference-counted clone: no allocation.
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    // Owned only when present (an admin call naming its workspace).
    let workspace = workspace_param(req.uri().query()).map(str::to_owned);
    #[cfg(not(feature = "otel"))]
    let response = super::json_errors(req, next).await;
    // With OpenTelemetry a span per request (continuing a caller's
    // `traceparent`); the plain build pays for no span.
    #[cfg(feature = "otel")]
    let response = {
        use tracing::Instrument;
        let span = tracing::info_span!(
            "request",
            otel.name = %format_args!("{} {}", method, route.as_ref().map_or("unmatched", MatchedPath::as_str)),
            http.request.method = %method,
            http.route = route.as_ref().map(MatchedPath::as_str),
            http.response.status_code = tracing::field::Empty,
        );
        crate::otel::set_parent(&span, req.headers());
        let response = super::json_errors(req, next).instrument(span.clone()).await;
        span.record("http.response.status_code", response.status().as_u16());
        response
    };
    let elapsed = start.elapsed();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let status = response.status().as_u16();
    crate::metrics::http_request(route, &method, status, elapsed);
    let ctx = response.extensions().get::<LogContext>();
    let workspace = ctx
        .map(|c| c.workspace.as_str())
        .or(workspace.as_deref())
        .map(tracing::field::display);
    let user = ctx.map(|c| tracing::field::display(c.user.as_str()));
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    if is_probe(route) {
        tracing::debug!(target: "switchboard::http", %method, %route, status, latency_ms, "request");
    } else {
        tracing::info!(
            target: "switchboard::http",
            %method,
            %route,
            status,
            latency_ms,
            workspace,
            user,
            "request"
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_param_is_read_from_the_query() {
        assert_eq!(workspace_param(Some("workspace=w1")), Some("w1"));
        assert_eq!(workspace_param(Some("a=1&workspace=w2&b")), Some("w2"));
        assert_eq!(workspace_param(Some("workspace=")), None);
        assert_eq!(workspace_param(Some("myworkspace=x")), None);
        assert_eq!(workspace_param(None), None);
    }
}
