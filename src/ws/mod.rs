//! The agent WebSocket at `GET /v1/ws`, once upgraded: one session per
//! connection. The HTTP handshake (token, query, `101`) is
//! `http::ws_upgrade`, which hands the upgraded connection to [`serve`].
//!
//! - [`protocol`]: client → server frames and their parsing;
//! - [`dispatch`]: one handler per client command;
//! - [`replies`]: the frames that answer a request;
//! - [`session`]: the connection loop (queue, reads, heartbeats, close).
//! - [`sent`]: what a session wrote of each conversation, for resume de-duplication.

pub mod dispatch;
pub mod protocol;
pub mod replies;
pub mod sent;
pub mod session;

use std::sync::Arc;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::domain::User;
use crate::ops::Gateway;

pub use session::Options;

/// Serves the connection of an authenticated `user` (token expiry `exp`)
/// once hyper hands it over upgraded. The future is the connection's task:
/// see `session::run` for what it keeps while the connection lives.
pub fn serve(
    gw: Arc<Gateway>,
    on_upgrade: OnUpgrade,
    user: User,
    exp: u64,
    options: Options,
) -> impl std::future::Future<Output = ()> + Send {
    let max_frame_bytes = gw.config.limits.max_frame_bytes;
    let upgrade = async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return None;
            }
        };
        let config = socket_config(max_frame_bytes);
        Some(
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await,
        )
    };
    session::run(gw, upgrade, user, exp, options)
}

/// The buffers of an agent socket (`loadtest`'s floor server uses them too,
/// so that memory per connection compares). A small read buffer keeps an
/// idle connection cheap (it grows to the frame being read; tungstenite also
/// zero-fills it before every read); frames are batched up to 16 KiB per
/// socket write.
pub fn socket_config(max_frame_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(512)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(4 * 1024 * 1024)
        .max_message_size(Some(max_frame_bytes))
        .max_frame_size(Some(max_frame_bytes))
}
