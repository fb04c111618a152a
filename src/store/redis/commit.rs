//! Commits: a change becomes a typed plan (`Plan`, a list of `Op`s), which
//! `lua/commit.lua` applies atomically (see the module doc of [`super`]).

use std::sync::Arc;

use redis::{Script, Value};
use serde::Deserialize;

use super::group::{Prepared, FIXED_KEYS};
use super::keys::{mark_field, thread_field, Hash, Keys, WORKSPACES};
use super::snapshot::HistoryEntry;
use super::{bounded, corrupt, int, to_json, Inner};
use crate::domain::{
    fingerprint, record_delivery, redact, without_content, Activity, Change, Committed,
    Conversation, Delivery, Id, Mark, Message, Sender,
};
use crate::store::{Outcome, StoreError};

/// The commit script.
pub const COMMIT: &str = include_str!("lua/commit.lua");
/// Idempotency keys are remembered this long.
pub const IDEMPOTENCY_TTL_SECS: u64 = 24 * 3600;
/// Tries of a commit whose plan went stale before it ran: a message deletion
/// whose conversation keeps moving, a replace import racing a new conversation.
const ATTEMPTS: u32 = 5;

pub(super) fn script() -> Script {
    Script::new(COMMIT)
}

/// One step of the commit script.
#[derive(Clone, Debug, PartialEq)]
enum Op {
    Hset {
        hash: Hash,
        field: String,
        value: String,
    },
    Hdel {
        hash: Hash,
        field: String,
    },
    SetSettings {
        json: String,
    },
    /// Precondition: the field holds exactly `value`.
    Expect {
        hash: Hash,
        field: String,
        value: String,
    },
    /// Precondition: no other open conversation holds the thread; then take it.
    Claim {
        field: String,
        conversation: Id,
    },
    /// Take the thread unless another open conversation holds it.
    Bind {
        field: String,
        conversation: Id,
    },
    /// Free the thread the stored conversation routes, if it still does.
    Release {
        conversation: Id,
    },
    /// Raise the field to `value` (`None`: this commit's seq).
    Max {
        hash: Hash,
        field: String,
        value: Option<u64>,
    },
    /// Set the field to this commit's seq followed by `suffix`.
    SeqThen {
        hash: Hash,
        field: String,
        suffix: String,
    },
    /// Set the field to the latest seq of `conversation`.
    Latest {
        hash: Hash,
        field: String,
        conversation: Id,
    },
    /// Replace a history member of the sequenced conversation.
    Redact {
        seq: u64,
        member: String,
        redacted: String,
    },
    /// Replace import: the history of `conversation` (at `KEYS[key]`) goes.
    Forget {
        key: usize,
        conversation: Id,
    },
    /// Record a delivery in the outbox stream `KEYS[key]` if the sequenced
    /// conversation's channel subscribes to `event` (checked by the script).
    Outbox {
        key: usize,
        event: &'static str,
        detail: String,
    },
}

impl Op {
    /// The quadruple `(op, a, b, c)` the script reads.
    fn args(&self) -> [String; 4] {
        let s = |v: &str| v.to_owned();
        match self {
            Op::Hset { hash, field, value } => [s("hset"), s(hash.name()), s(field), s(value)],
            Op::Hdel { hash, field } => [s("hdel"), s(hash.name()), s(field), String::new()],
            Op::SetSettings { json } => [s("set"), String::new(), String::new(), s(json)],
            Op::Expect { hash, field, value } => [s("expect"), s(hash.name()), s(field), s(value)],
            Op::Claim {
                field,
                conversation,
            } => [s("claim"), s("threads"), s(field), s(conversation)],
            Op::Bind {
                field,
                conversation,
            } => [s("bind"), s("threads"), s(field), s(conversation)],
            Op::Release { conversation } => {
                [s("release"), s("threads"), s(conversation), String::new()]
            }
            Op::Max { hash, field, value } => [
                s("hmax"),
                s(hash.name()),
                s(field),
                value.map(|v| v.to_string()).unwrap_or_default(),
            ],
            Op::SeqThen {
                hash,
                field,
                suffix,
            } => [s("hseq"), s(hash.name()), s(field), s(suffix)],
            Op::Latest {
                hash,
                field,
                conversation,
            } => [s("hlatest"), s(hash.name()), s(field), s(conversation)],
            Op::Redact {
                seq,
                member,
                redacted,
            } => [s("redact"), seq.to_string(), s(member), s(redacted)],
            Op::Forget { key, conversation } => {
                [s("forget"), key.to_string(), s(conversation), String::new()]
            }
            Op::Outbox { key, event, detail } => {
                [s("outbox"), key.to_string(), s(event), s(detail)]
            }
        }
    }
}

/// What the script does for one change.
#[derive(Default)]
struct Plan {
    seq_conv: Option<Id>,
    /// Idempotency key and the record's fields after `seq`.
    idempotency: Option<(String, String)>,
    replace: bool,
    drop_history: Option<Id>,
    ops: Vec<Op>,
    /// Optional `KEYS` after the fixed ones.
    extra_keys: Vec<String>,
}

impl Plan {
    fn hset(&mut self, hash: Hash, field: &str, value: String) {
        self.ops.push(Op::Hset {
            hash,
            field: field.to_owned(),
            value,
        });
    }

    fn hdel(&mut self, hash: Hash, field: &str) {
        self.ops.push(Op::Hdel {
            hash,
            field: field.to_owned(),
        });
    }

    /// Stores a conversation and keeps the thread map current: its old
    /// thread is released, an open one bound (`claim`ed by `commit_thread`).
    fn conversation(&mut self, conv: &Conversation, release: bool) -> Result<(), StoreError> {
        if release {
            self.ops.push(Op::Release {
                conversation: conv.id.clone(),
            });
        }
        self.hset(Hash::Conversations, &conv.id, to_json(conv)?);
        if let Some((channel, thread)) = conv.open_thread() {
            self.ops.push(Op::Bind {
                field: thread_field(channel, thread),
                conversation: conv.id.clone(),
            });
        }
        Ok(())
    }

    /// `commit_thread`: binding becomes a precondition.
    fn claim_threads(&mut self) {
        for op in &mut self.ops {
            if let Op::Bind {
                field,
                conversation,
            } = op
            {
                *op = Op::Claim {
                    field: std::mem::take(field),
                    conversation: std::mem::take(conversation),
                };
            }
        }
    }

    /// Adds an optional key; its index in `KEYS` (1-based, as Lua counts).
    fn key(&mut self, key: String) -> usize {
        self.extra_keys.push(key);
        FIXED_KEYS + self.extra_keys.len()
    }
}

fn mark_kind(mark: &Mark) -> &'static str {
    match mark {
        Mark::Read { .. } => "read",
        Mark::Mute { .. } => "mute",
        Mark::Hide { .. } => "hide",
        Mark::Archive { .. } => "archive",
    }
}

/// `seq ts awaiting` of the `activity` hash, after the seq the script adds.
fn activity_suffix(message: &Message) -> String {
    let activity = Activity::of_message(message, 0);
    format!(
        " {} {}",
        activity.last_ts,
        u8::from(activity.awaiting_reply)
    )
}

#[derive(Deserialize)]
struct IdempotencyRecord {
    seq: u64,
    message: Message,
    /// Absent in records written before fingerprints: then `message` still
    /// has its content and is fingerprinted itself.
    #[serde(default)]
    fp: Option<String>,
}

impl Inner {
    /// [`crate::store::Store::commit_if`], and with `thread`
    /// [`crate::store::Store::commit_thread`].
    pub(super) async fn commit(
        &self,
        workspace: &str,
        change: Change,
        base: Option<&Conversation>,
        thread: bool,
    ) -> Result<Outcome, StoreError> {
        // A plan read from Redis (what to redact, which histories a replace
        // drops) is refused when it went stale before the script ran: read
        // again (a few times).
        let replanned = matches!(
            change,
            Change::EditMessage { body: None, .. }
                | Change::MessageStatus { .. }
                | Change::Import { replace: true, .. }
        );
        if !replanned {
            return self.commit_once(workspace, change, base, thread).await;
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .commit_once(workspace, change.clone(), base, thread)
                .await
            {
                Err(StoreError::Conflict(_)) if attempt < ATTEMPTS => {}
                other => return other,
            }
        }
    }

    /// Lists the workspace in [`WORKSPACES`] (once per node and bus
    /// session) before its first commit: that key lies outside the
    /// workspace's slot, so the commit script may not write it. Listed
    /// first, a workspace with data is always listed. The start-up load of
    /// subscribe mode `all` and the outbound deliverer (which workspaces
    /// have an outbox) read it, on a Redis Cluster too; no commit script
    /// touches it, and a node writes it once per workspace.
    async fn ensure_listed(&self, workspace: &str) -> Result<(), StoreError> {
        if self.listed.lock().contains(workspace) {
            return Ok(());
        }
        let mut conn = self.conn();
        bounded(
            redis::cmd("SADD")
                .arg(WORKSPACES)
                .arg(workspace)
                .query_async::<()>(&mut conn),
        )
        .await?;
        self.listed.lock().insert(workspace.to_owned());
        Ok(())
    }

    async fn commit_once(
        &self,
        workspace: &str,
        change: Change,
        base: Option<&Conversation>,
        thread: bool,
    ) -> Result<Outcome, StoreError> {
        self.ensure_listed(workspace).await?;
        let keys = Keys::of(workspace);
        let mut plan = self.plan(workspace, &change).await?;
        if thread {
            plan.claim_threads();
        }
        if let (Some(base), Change::Conversation { conversation, .. }) = (base, &change) {
            plan.ops.push(Op::Expect {
                hash: Hash::Conversations,
                field: conversation.id.clone(),
                value: to_json(base)?,
            });
        }
        let history_key = plan.seq_conv.clone().map(|c| plan.key(keys.history(&c)));
        let (idem_key, idem_record) = plan.idempotency.clone().unwrap_or_default();
        let idem_index = plan.idempotency.is_some().then(|| plan.key(idem_key));
        let drop_index = plan
            .drop_history
            .clone()
            .map(|c| plan.key(keys.history(&c)));
        let mut args = vec![
            to_json(&change)?,
            plan.seq_conv.clone().unwrap_or_default(),
            history_key.unwrap_or(0).to_string(),
            idem_index.unwrap_or(0).to_string(),
            IDEMPOTENCY_TTL_SECS.to_string(),
            idem_record,
            self.history_len.to_string(),
            if plan.replace { "1" } else { "0" }.to_owned(),
            drop_index.unwrap_or(0).to_string(),
        ];
        args.reserve(plan.ops.len() * 4);
        for op in &plan.ops {
            args.extend(op.args());
        }
        let prepared = Prepared {
            keys: plan.extra_keys,
            args,
        };
        let reply = self
            .groups
            .run(workspace, prepared, || self.group_target(workspace))
            .await?;
        match reply.as_slice() {
            [Value::Int(1), Value::BulkString(record)] => {
                let r: IdempotencyRecord =
                    serde_json::from_slice(record).map_err(|e| corrupt("idempotency record", e))?;
                let Change::Message { message, .. } = &change else {
                    return Err(corrupt("commit reply", "a duplicate of no message"));
                };
                let first = r.fp.unwrap_or_else(|| fingerprint(&r.message));
                if first != fingerprint(message) {
                    return Err(StoreError::IdempotencyKeyReused);
                }
                Ok(Outcome::Duplicate {
                    message: Box::new(without_content(&r.message)),
                    seq: r.seq,
                })
            }
            [Value::Int(2)] => Err(StoreError::Conflict(format!(
                "conversation changed meanwhile in workspace {workspace:?}"
            ))),
            [Value::Int(4)] => Err(StoreError::Conflict(format!(
                "a conversation was added during a replace import of workspace {workspace:?}"
            ))),
            [Value::Int(3), Value::BulkString(holder), n] => {
                let holder =
                    String::from_utf8(holder.clone()).map_err(|e| corrupt("thread holder", e))?;
                // The holder was committed before: let the consumers learn of it.
                if let Some(n) = int(n) {
                    self.wait_applied(workspace, n).await;
                }
                Err(StoreError::ThreadTaken(holder))
            }
            [Value::Int(0), n, seq] => {
                let (Some(n), Some(seq)) = (int(n), int(seq)) else {
                    return Err(corrupt("commit reply", format!("{reply:?}")));
                };
                if !self.wait_applied(workspace, n).await {
                    tracing::warn!(
                        workspace,
                        commit = n,
                        "stored, but the bus did not deliver it within {:?}",
                        super::APPLY_WAIT
                    );
                }
                Ok(Outcome::Stored(Arc::new(Committed {
                    workspace: workspace.to_owned(),
                    seq,
                    change,
                })))
            }
            other => Err(corrupt("commit reply", format!("{other:?}"))),
        }
    }

    /// Builds the script's plan for a change.
    async fn plan(&self, ws: &str, change: &Change) -> Result<Plan, StoreError> {
        let mut plan = Plan {
            seq_conv: change.sequenced_conversation().map(str::to_owned),
            ..Plan::default()
        };
        match change {
            Change::Import { world, replace } => {
                plan.replace = *replace;
                if *replace {
                    for conversation in self.sequenced(ws).await? {
                        let key = plan.key(Keys::of(ws).history(&conversation));
                        plan.ops.push(Op::Forget { key, conversation });
                    }
                }
                for u in world.users_of(ws) {
                    plan.hset(Hash::Users, &u.id, to_json(u)?);
                }
                for c in world.channels_of(ws) {
                    plan.hset(Hash::Channels, &c.id, to_json(c)?);
                }
                for k in world.contacts_of(ws) {
                    plan.hset(Hash::Contacts, &k.id, to_json(k)?);
                }
                for c in world.conversations_of(ws) {
                    // A replace clears the thread map first: nothing to release.
                    plan.conversation(c, !*replace)?;
                }
                if let Some(settings) = world.settings_of(ws) {
                    plan.ops.push(Op::SetSettings {
                        json: to_json(settings)?,
                    });
                }
            }
            Change::UpsertUser { user } => plan.hset(Hash::Users, &user.id, to_json(user)?),
            Change::DeleteUser { id } => plan.hdel(Hash::Users, id),
            Change::UpsertChannel { channel } => {
                plan.hset(Hash::Channels, &channel.id, to_json(channel)?)
            }
            Change::DeleteChannel { id } => plan.hdel(Hash::Channels, id),
            Change::UpsertContact { contact } => {
                plan.hset(Hash::Contacts, &contact.id, to_json(contact)?)
            }
            Change::DeleteContact { id } => plan.hdel(Hash::Contacts, id),
            Change::Settings { settings } => plan.ops.push(Op::SetSettings {
                json: to_json(settings)?,
            }),
            Change::Conversation { conversation, .. } => plan.conversation(conversation, true)?,
            Change::DeleteConversation { id } => {
                plan.ops.push(Op::Release {
                    conversation: id.clone(),
                });
                plan.hdel(Hash::Conversations, id);
                plan.hdel(Hash::Activity, id);
                plan.drop_history = Some(id.clone());
            }
            Change::Message {
                message,
                idempotency_key,
            } => {
                let conv = &message.conversation;
                if let Some(key) = idempotency_key {
                    let record = format!(
                        r#""message":{},"fp":{}"#,
                        to_json(&without_content(message))?,
                        to_json(&fingerprint(message))?
                    );
                    plan.idempotency = Some((Keys::of(ws).idempotency(conv, key), record));
                }
                plan.ops.push(Op::SeqThen {
                    hash: Hash::Activity,
                    field: conv.clone(),
                    suffix: activity_suffix(message),
                });
                plan.ops.push(Op::SeqThen {
                    hash: Hash::Messages,
                    field: message.id.clone(),
                    suffix: format!(" {conv}"),
                });
                if let Sender::User(u) = &message.sender {
                    // The hub counts one's own message as read.
                    plan.ops.push(Op::Max {
                        hash: Hash::Marks,
                        field: mark_field(u, conv, "read"),
                        value: None,
                    });
                }
            }
            Change::EditMessage {
                conversation,
                message_id,
                message_seq,
                body: None,
                ..
            } => {
                let (latest, redactions) = self
                    .redaction(ws, conversation, message_id, *message_seq)
                    .await?;
                // Refused if anything was committed to the conversation
                // since: an edit could have slipped past the redaction.
                if let Some(latest) = latest {
                    plan.ops.push(Op::Expect {
                        hash: Hash::Seqs,
                        field: conversation.clone(),
                        value: latest.to_string(),
                    });
                }
                plan.ops.extend(redactions);
            }
            Change::EditMessage { .. } => {}
            Change::MessageStatus {
                conversation,
                message_id,
                message_seq,
                delivery,
            } => {
                let (latest, rewrite) = self
                    .delivery(ws, conversation, message_id, *message_seq, delivery)
                    .await?;
                // Refused if anything was committed to the conversation since
                // (e.g. another receipt): the rewrite would undo it.
                if let Some(latest) = latest {
                    plan.ops.push(Op::Expect {
                        hash: Hash::Seqs,
                        field: conversation.clone(),
                        value: latest.to_string(),
                    });
                }
                plan.ops.extend(rewrite);
            }
            Change::Mark {
                user,
                conversation,
                mark,
            } => {
                let field = mark_field(user, conversation, mark_kind(mark));
                match mark {
                    Mark::Read { seq } => plan.ops.push(Op::Max {
                        hash: Hash::Marks,
                        field,
                        value: Some(*seq),
                    }),
                    Mark::Mute { on: true } | Mark::Archive { on: true } => {
                        plan.hset(Hash::Marks, &field, "1".into())
                    }
                    // As of the conversation's latest seq: a later message un-hides.
                    Mark::Hide { on: true } => plan.ops.push(Op::Latest {
                        hash: Hash::Marks,
                        field,
                        conversation: conversation.clone(),
                    }),
                    Mark::Mute { on: false }
                    | Mark::Hide { on: false }
                    | Mark::Archive { on: false } => plan.hdel(Hash::Marks, &field),
                }
            }
            Change::Ephemeral { .. } => {}
        }
        // Last: the script decides on the conversation as this change leaves it.
        if let Some((event, detail)) = crate::domain::outbound::delivery_event(change) {
            let key = plan.key(Keys::of(ws).outbox());
            plan.ops.push(Op::Outbox {
                key,
                event: event.as_str(),
                detail: detail.to_string(),
            });
        }
        Ok(plan)
    }

    /// Every conversation of the workspace with a seq (so with a history).
    async fn sequenced(&self, ws: &str) -> Result<Vec<Id>, StoreError> {
        let mut conn = self.conn();
        bounded(
            redis::cmd("HKEYS")
                .arg(Keys::of(ws).hash(Hash::Seqs))
                .query_async(&mut conn),
        )
        .await
    }

    /// The conversation's latest seq, and the redaction of every history
    /// member carrying the content of message `id` (stored at `seq`: the
    /// message and its edits), by [`redact`].
    async fn redaction(
        &self,
        ws: &str,
        conv: &str,
        id: &str,
        seq: u64,
    ) -> Result<(Option<u64>, Vec<Op>), StoreError> {
        let keys = Keys::of(ws);
        let mut conn = self.conn();
        let (latest, found): (Option<u64>, Vec<String>) = bounded(
            redis::pipe()
                .atomic()
                .hget(keys.hash(Hash::Seqs), conv)
                .cmd("ZRANGEBYSCORE")
                .arg(keys.history(conv))
                .arg(seq)
                .arg("+inf")
                .query_async(&mut conn),
        )
        .await?;
        let mut out = Vec::new();
        for member in found {
            let Ok(mut entry) = serde_json::from_str::<HistoryEntry>(&member) else {
                continue;
            };
            if redact(&mut entry.change, id, seq, entry.seq) {
                out.push(Op::Redact {
                    seq: entry.seq,
                    redacted: to_json(&entry)?,
                    member,
                });
            }
        }
        Ok((latest, out))
    }
}

impl Inner {
    /// The conversation's latest seq, and the rewrite of message `id`
    /// (stored at `seq`) with its new receipt, by [`record_delivery`].
    async fn delivery(
        &self,
        ws: &str,
        conv: &str,
        id: &str,
        seq: u64,
        delivery: &Delivery,
    ) -> Result<(Option<u64>, Vec<Op>), StoreError> {
        let keys = Keys::of(ws);
        let mut conn = self.conn();
        let (latest, found): (Option<u64>, Vec<String>) = bounded(
            redis::pipe()
                .atomic()
                .hget(keys.hash(Hash::Seqs), conv)
                .cmd("ZRANGEBYSCORE")
                .arg(keys.history(conv))
                .arg(seq)
                .arg(seq)
                .query_async(&mut conn),
        )
        .await?;
        let mut out = Vec::new();
        for member in found {
            let Ok(mut entry) = serde_json::from_str::<HistoryEntry>(&member) else {
                continue;
            };
            if record_delivery(&mut entry.change, id, seq, entry.seq, delivery) {
                out.push(Op::Redact {
                    seq: entry.seq,
                    redacted: to_json(&entry)?,
                    member,
                });
            }
        }
        Ok((latest, out))
    }

    /// [`crate::store::Store::locate_message`]: the `messages` hash.
    pub(super) async fn locate_message(
        &self,
        ws: &str,
        id: &str,
    ) -> Result<Option<(Id, u64)>, StoreError> {
        let mut conn = self.conn();
        let place: Option<String> = bounded(
            redis::cmd("HGET")
                .arg(Keys::of(ws).hash(Hash::Messages))
                .arg(id)
                .query_async(&mut conn),
        )
        .await?;
        Ok(place.and_then(|p| {
            let (seq, conv) = p.split_once(' ')?;
            Some((conv.to_owned(), seq.parse().ok()?))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_thread_turns_binds_into_claims_only() {
        let mut plan = Plan::default();
        let mut conv =
            Conversation::new_customer("v1".into(), "w1".into(), "ch".into(), "k".into());
        conv.thread = Some("t".into());
        plan.conversation(&conv, true).expect("plan");
        plan.claim_threads();
        let ops: Vec<&str> = plan
            .ops
            .iter()
            .map(|op| match op {
                Op::Release { .. } => "release",
                Op::Hset { .. } => "hset",
                Op::Claim { .. } => "claim",
                _ => "other",
            })
            .collect();
        assert_eq!(ops, ["release", "hset", "claim"]);
        assert_eq!(plan.ops[2].args()[2], thread_field("ch", "t"));
    }
}
