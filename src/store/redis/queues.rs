//! Round-robin rotations and waiting queues, per channel of a workspace.

use redis::Script;

use super::keys::Keys;
use super::Inner;
use crate::domain::Id;
use crate::store::StoreError;

pub const ROTATE: &str = include_str!("lua/rotate.lua");
const PUSH_ONCE: &str = include_str!("lua/push_once.lua");

pub(super) struct Scripts {
    rotate: Script,
    push_once: Script,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        Scripts {
            rotate: Script::new(ROTATE),
            push_once: Script::new(PUSH_ONCE),
        }
    }
}

impl Inner {
    /// One step of [`crate::assign::rotate`], atomic across nodes.
    pub(super) async fn rotate(
        &self,
        workspace: &str,
        channel: &str,
        pool: &[Id],
        eligible: &[Id],
    ) -> Result<Option<Id>, StoreError> {
        let mut inv = self
            .queues
            .rotate
            .key(Keys::of(workspace).rotation(channel));
        inv.arg(pool.len()).arg(pool).arg(eligible);
        let mut conn = self.conn();
        self.bounded_in(workspace, inv.invoke_async(&mut conn))
            .await
    }

    pub(super) async fn push_waiting(
        &self,
        workspace: &str,
        channel: &str,
        conversation: &str,
    ) -> Result<(), StoreError> {
        let mut inv = self
            .queues
            .push_once
            .key(Keys::of(workspace).waiting(channel));
        inv.arg(conversation);
        let mut conn = self.conn();
        self.bounded_in(workspace, inv.invoke_async::<()>(&mut conn))
            .await
    }

    pub(super) async fn waiting(
        &self,
        workspace: &str,
        channel: &str,
    ) -> Result<Vec<Id>, StoreError> {
        let mut conn = self.conn();
        self.bounded_in(
            workspace,
            redis::cmd("LRANGE")
                .arg(Keys::of(workspace).waiting(channel))
                .arg(0)
                .arg(-1)
                .query_async(&mut conn),
        )
        .await
    }

    pub(super) async fn take_waiting(
        &self,
        workspace: &str,
        channel: &str,
        conversation: &str,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let removed: u64 = self
            .bounded_in(
                workspace,
                redis::cmd("LREM")
                    .arg(Keys::of(workspace).waiting(channel))
                    .arg(0)
                    .arg(conversation)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(removed > 0)
    }
}
