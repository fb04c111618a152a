//! The outbox in Redis: not yet implemented (the memory store has it).

use std::time::Duration;

use super::RedisStore;
use crate::domain::OutboxItem;
use crate::store::{DeadLetter, OutboxStatus, StoreError};

fn unsupported() -> StoreError {
    StoreError::Unavailable("the Redis outbox is not implemented yet".into())
}

pub async fn claim(
    _store: &RedisStore,
    _limit: usize,
    wait: Duration,
) -> Result<Vec<OutboxItem>, StoreError> {
    tokio::time::sleep(wait).await;
    Ok(Vec::new())
}

pub async fn ack(_store: &RedisStore, _item: &OutboxItem) -> Result<(), StoreError> {
    Err(unsupported())
}

pub async fn dead(_store: &RedisStore, _dead: DeadLetter) -> Result<(), StoreError> {
    Err(unsupported())
}

pub async fn status(
    _store: &RedisStore,
    _workspace: &str,
    _channel: &str,
    _limit: usize,
) -> Result<OutboxStatus, StoreError> {
    Ok(OutboxStatus::default())
}

pub async fn retry(
    _store: &RedisStore,
    _workspace: &str,
    _channel: &str,
    _id: Option<&str>,
) -> Result<usize, StoreError> {
    Ok(0)
}
