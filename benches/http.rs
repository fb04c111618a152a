//! Per-request cost of the request log and HTTP metrics layer
//! (`src/http/observe.rs`): the same tiny route served in process with and
//! without the layer, with the Prometheus recorder installed and an `info`
//! log subscriber formatting every line (written to a sink).
//!
//! Run: `cargo bench --bench http` (or `-- --quick`); `RUST_LOG=warn` leaves the
//! log line out.

use std::hint::black_box;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::post;
use axum::Router;
use criterion::{criterion_group, criterion_main, Criterion};
use tower::ServiceExt;

fn router(observed: bool) -> Router {
    let r = Router::new().route(
        "/v1/conversations/{id}/messages",
        post(|| async { StatusCode::UNAUTHORIZED }),
    );
    if observed {
        r.layer(axum::middleware::from_fn(
            switchboard::http::observe::observe,
        ))
    } else {
        r
    }
}

fn bench(c: &mut Criterion) {
    switchboard::metrics::install();
    let _ = tracing_subscriber::fmt()
        // RUST_LOG=warn measures the layer without the log line.
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .with_writer(std::io::sink)
        .try_init();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("http");
    for (name, observed) in [("plain", false), ("observed", true)] {
        let app = router(observed);
        g.bench_function(name, |b| {
            b.iter(|| {
                let req = Request::post("/v1/conversations/v1/messages?workspace=w1")
                    .body(Body::empty())
                    .expect("request");
                let resp = rt.block_on(app.clone().oneshot(req));
                black_box(resp.map(|r| r.status()))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
