//! Cluster storage on Redis (issue #4): not implemented yet.

use std::sync::Arc;

use super::Store;

pub async fn connect(
    url: &str,
    _node_id: &str,
    _history_len: usize,
) -> anyhow::Result<Arc<dyn Store>> {
    anyhow::bail!("Redis storage ({url}) is not implemented yet; unset SWITCHBOARD_REDIS_URL")
}
