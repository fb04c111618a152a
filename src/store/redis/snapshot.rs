//! Reading stored state back: a workspace's snapshot (directory, seqs, last
//! messages, marks) and a conversation's history.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::keys::{Hash, Keys, WORKSPACES};
use super::{bounded, corrupt, Inner};
use crate::domain::{Activity, Change, Committed, EntityKind, Id, Mark, WorkspaceSettings, World};
use crate::store::{History, IdKind, Snapshot, StoreError, StoredMarks, StoredWorkspace};

/// Workspaces asked at once by the look-ups across every workspace (each
/// command goes to its workspace's slot; on one primary they pipeline).
const CONCURRENT_LOOKUPS: usize = 32;

/// A member of a conversation's history.
#[derive(Serialize, Deserialize)]
pub(super) struct HistoryEntry {
    pub seq: u64,
    pub change: Change,
}

impl Inner {
    /// Events of a conversation after `after_seq` (see [`crate::store::Store::history`]).
    pub(super) async fn history(
        &self,
        workspace: &str,
        conversation: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<History, StoreError> {
        let keys = Keys::of(workspace);
        let key = keys.history(conversation);
        let limit = limit.min(self.history_len);
        let mut conn = self.conn();
        let (latest, first, found): (Option<u64>, Vec<String>, Vec<String>) = self
            .bounded_in(
                workspace,
                redis::pipe()
                    .atomic()
                    .hget(keys.hash(Hash::Seqs), conversation)
                    .zrange(&key, 0, 0)
                    .cmd("ZRANGEBYSCORE")
                    .arg(&key)
                    .arg(format!("({after_seq}"))
                    .arg("+inf")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit)
                    .query_async(&mut conn),
            )
            .await?;
        let decode = |s: &String| -> Result<HistoryEntry, StoreError> {
            serde_json::from_str(s).map_err(|e| corrupt(&format!("history of {conversation:?}"), e))
        };
        let latest_seq = latest.unwrap_or(0);
        let oldest_seq = match first.first() {
            Some(s) => decode(s)?.seq,
            None => latest_seq + 1,
        };
        let events = found
            .iter()
            .map(|s| {
                decode(s).map(|e| Committed {
                    workspace: workspace.to_owned(),
                    seq: e.seq,
                    change: e.change,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(History {
            events,
            oldest_seq,
            latest_seq,
        })
    }

    /// Every listed workspace's snapshot and commit counter, each read
    /// atomically (subscribe mode `all`).
    pub(super) async fn load_all(&self) -> Result<(Vec<Snapshot>, HashMap<Id, u64>), StoreError> {
        let workspaces = self.listed_workspaces().await?;
        self.load_these(workspaces).await
    }

    /// Every workspace listed in [`WORKSPACES`], in order.
    pub(super) async fn listed_workspaces(&self) -> Result<Vec<Id>, StoreError> {
        let mut conn = self.conn();
        let mut workspaces: Vec<Id> = bounded(
            redis::cmd("SMEMBERS")
                .arg(WORKSPACES)
                .query_async(&mut conn),
        )
        .await?;
        workspaces.sort();
        Ok(workspaces)
    }

    /// `read` of every listed workspace, [`CONCURRENT_LOOKUPS`] at a time,
    /// in workspace order; the first error ends it.
    async fn each_workspace<T, F, Fut>(&self, read: F) -> Result<Vec<T>, StoreError>
    where
        F: Fn(Id) -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        use futures_util::{StreamExt, TryStreamExt};
        let workspaces = self.listed_workspaces().await?;
        futures_util::stream::iter(workspaces.into_iter().map(read))
            .buffered(CONCURRENT_LOOKUPS)
            .try_collect()
            .await
    }

    /// See [`crate::store::Store::workspaces`]: per listed workspace, one
    /// atomic read of its own slot.
    pub(super) async fn stored_workspaces(&self) -> Result<Vec<StoredWorkspace>, StoreError> {
        self.each_workspace(|ws| async move {
            let keys = Keys::of(&ws);
            let mut conn = self.conn();
            let (users, channels, contacts, conversations, settings): (
                bool,
                bool,
                bool,
                bool,
                Option<String>,
            ) = self
                .bounded_in(
                    &ws,
                    redis::pipe()
                        .atomic()
                        .exists(keys.hash(Hash::Users))
                        .exists(keys.hash(Hash::Channels))
                        .exists(keys.hash(Hash::Contacts))
                        .exists(keys.hash(Hash::Conversations))
                        .get(keys.settings())
                        .query_async(&mut conn),
                )
                .await?;
            let settings = decode_settings(&keys, settings)?;
            Ok(StoredWorkspace {
                workspace: ws,
                users,
                objects: users || channels || contacts || conversations,
                settings,
            })
        })
        .await
    }

    /// See [`crate::store::Store::workspaces_holding`]: one `HEXISTS` per
    /// listed workspace, on its own slot (on one primary, all in one
    /// pipeline: one round trip).
    pub(super) async fn workspaces_holding(
        &self,
        kind: IdKind,
        id: &str,
    ) -> Result<Vec<Id>, StoreError> {
        let hash = match kind {
            IdKind::Entity(EntityKind::User) => Hash::Users,
            IdKind::Entity(EntityKind::Channel) => Hash::Channels,
            IdKind::Entity(EntityKind::Contact) => Hash::Contacts,
            IdKind::Conversation => Hash::Conversations,
            IdKind::Message => Hash::Messages,
        };
        let hexists = |ws: &str| {
            let mut cmd = redis::cmd("HEXISTS");
            cmd.arg(Keys::of(ws).hash(hash)).arg(id);
            cmd
        };
        if !self.sharded {
            let workspaces = self.listed_workspaces().await?;
            if workspaces.is_empty() {
                return Ok(Vec::new());
            }
            let mut pipe = redis::pipe();
            for ws in &workspaces {
                pipe.add_command(hexists(ws));
            }
            let mut conn = self.conn();
            let holds: Vec<bool> = bounded(pipe.query_async(&mut conn)).await?;
            return Ok(workspaces
                .into_iter()
                .zip(holds)
                .filter_map(|(ws, holds)| holds.then_some(ws))
                .collect());
        }
        let found = self
            .each_workspace(|ws| async move {
                let mut conn = self.conn();
                let holds: bool = self
                    .bounded_in(&ws, hexists(&ws).query_async(&mut conn))
                    .await?;
                Ok(holds.then_some(ws))
            })
            .await?;
        Ok(found.into_iter().flatten().collect())
    }

    /// These workspaces' snapshots and commit counters, each read atomically
    /// (a workspace without data is an empty snapshot). Reads only keys of
    /// the workspaces' own slots.
    pub(super) async fn load_these(
        &self,
        workspaces: Vec<Id>,
    ) -> Result<(Vec<Snapshot>, HashMap<Id, u64>), StoreError> {
        let mut snaps = Vec::with_capacity(workspaces.len());
        let mut counters = HashMap::new();
        for ws in workspaces {
            let (snap, commits) = self.load_one(ws).await?;
            counters.insert(snap.workspace.clone(), commits);
            snaps.push(snap);
        }
        Ok((snaps, counters))
    }

    /// One workspace's snapshot and commit counter, read atomically.
    pub(super) async fn load_one(&self, ws: Id) -> Result<(Snapshot, u64), StoreError> {
        let mut conn = self.conn();
        {
            let keys = Keys::of(&ws);
            type Raw = (
                Vec<String>,
                Vec<String>,
                Vec<String>,
                Vec<String>,
                Option<String>,
                HashMap<String, u64>,
                Option<u64>,
                HashMap<String, String>,
                HashMap<String, String>,
            );
            let (
                users,
                channels,
                contacts,
                conversations,
                settings,
                seqs,
                commits,
                activity,
                marks,
            ): Raw = self
                .bounded_in(
                    &ws,
                    redis::pipe()
                        .atomic()
                        .hvals(keys.hash(Hash::Users))
                        .hvals(keys.hash(Hash::Channels))
                        .hvals(keys.hash(Hash::Contacts))
                        .hvals(keys.hash(Hash::Conversations))
                        .get(keys.settings())
                        .hgetall(keys.hash(Hash::Seqs))
                        .get(keys.commits())
                        .hgetall(keys.hash(Hash::Activity))
                        .hgetall(keys.hash(Hash::Marks))
                        .query_async(&mut conn),
                )
                .await?;
            let mut world = World {
                users: decode_all(&ws, "user", &users)?,
                channels: decode_all(&ws, "channel", &channels)?,
                contacts: decode_all(&ws, "contact", &contacts)?,
                conversations: decode_all(&ws, "conversation", &conversations)?,
                ..World::default()
            };
            world.users.sort_by(|a, b| a.id.cmp(&b.id));
            world.channels.sort_by(|a, b| a.id.cmp(&b.id));
            world.contacts.sort_by(|a, b| a.id.cmp(&b.id));
            world.conversations.sort_by(|a, b| a.id.cmp(&b.id));
            let settings = decode_settings(&keys, settings)?;
            let mut seqs: Vec<(Id, u64)> = seqs.into_iter().collect();
            seqs.sort();
            let activity = decode_activity(&ws, &world, activity);
            let marks = decode_marks(&ws, &world, marks);
            let snap = Snapshot {
                workspace: ws,
                world,
                settings,
                seqs,
                activity,
                marks,
            };
            Ok((snap, commits.unwrap_or(0)))
        }
    }
}

/// `sb:{ws}:settings`, if stored.
fn decode_settings(
    keys: &Keys,
    raw: Option<String>,
) -> Result<Option<WorkspaceSettings>, StoreError> {
    raw.map(|s| serde_json::from_str(&s).map_err(|e| corrupt(&keys.settings(), e)))
        .transpose()
}

fn decode_all<T: serde::de::DeserializeOwned>(
    ws: &str,
    what: &str,
    raw: &[String],
) -> Result<Vec<T>, StoreError> {
    raw.iter()
        .map(|s| {
            serde_json::from_str(s)
                .map_err(|e| corrupt(&format!("workspace {ws:?}: stored {what}"), e))
        })
        .collect()
}

/// `sb:{ws}:activity` (`seq ts awaiting`), for the world's conversations;
/// an unreadable entry is skipped (the next message rewrites it).
fn decode_activity(ws: &str, world: &World, raw: HashMap<String, String>) -> Vec<(Id, Activity)> {
    let known: HashSet<&str> = world.conversations.iter().map(|c| c.id.as_str()).collect();
    let mut out: Vec<(Id, Activity)> = raw
        .into_iter()
        .filter(|(conv, _)| known.contains(conv.as_str()))
        .filter_map(|(conv, v)| {
            let mut it = v.split(' ').map(str::parse::<u64>);
            match (it.next(), it.next(), it.next(), it.next()) {
                (Some(Ok(seq)), Some(Ok(ts)), Some(Ok(flag)), None) => Some((
                    conv,
                    Activity {
                        last_message_seq: seq,
                        awaiting_reply: flag == 1,
                        last_ts: ts,
                    },
                )),
                _ => {
                    tracing::warn!(workspace = ws, conversation = %conv, value = %v, "unreadable stored activity; skipped");
                    None
                }
            }
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// `sb:{ws}:marks`, per user and conversation of the world. Values are a
/// number (`read`: highest seq read; `hide`: the latest seq when hidden;
/// `mute` / `archive`: present = on) or, as first stored, the `mark` change
/// JSON. An unreadable entry is skipped.
fn decode_marks(ws: &str, world: &World, raw: HashMap<String, String>) -> Vec<StoredMarks> {
    enum Entry {
        Read(u64),
        Mute(bool),
        Archive(bool),
        HiddenAt(Option<u64>),
    }
    let users: HashSet<&str> = world.users.iter().map(|u| u.id.as_str()).collect();
    let convs: HashSet<&str> = world.conversations.iter().map(|c| c.id.as_str()).collect();
    let numeric = |field: &str, value: &str| -> Option<(Id, Id, Entry)> {
        let (pair, kind) = field.rsplit_once('\n')?;
        // `user \n conversation`: ids may contain a newline, so take the
        // split that names a known conversation (and user).
        let splits: Vec<(&str, &str)> = pair
            .match_indices('\n')
            .map(|(i, _)| (&pair[..i], &pair[i + 1..]))
            .filter(|(_, c)| convs.contains(c))
            .collect();
        let (user, conv) = splits
            .iter()
            .find(|(u, _)| users.contains(u))
            .or(splits.first())?;
        let entry = match kind {
            "read" => Entry::Read(value.parse().ok()?),
            "hide" => Entry::HiddenAt(Some(value.parse().ok()?)),
            "mute" => Entry::Mute(true),
            "archive" => Entry::Archive(true),
            _ => return None,
        };
        Some(((*user).to_owned(), (*conv).to_owned(), entry))
    };
    let mut out: HashMap<(Id, Id), StoredMarks> = HashMap::new();
    for (field, value) in raw {
        let parsed = if value.starts_with('{') {
            match serde_json::from_str::<Change>(&value) {
                Ok(Change::Mark {
                    user,
                    conversation,
                    mark,
                }) => {
                    let entry = match mark {
                        Mark::Read { seq } => Entry::Read(seq),
                        Mark::Mute { on } => Entry::Mute(on),
                        Mark::Archive { on } => Entry::Archive(on),
                        // No seq known: hidden until un-hidden again.
                        Mark::Hide { on } => Entry::HiddenAt(on.then_some(u64::MAX)),
                    };
                    Some((user, conversation, entry))
                }
                _ => None,
            }
        } else {
            numeric(&field, &value)
        };
        let Some((user, conversation, entry)) = parsed else {
            tracing::warn!(workspace = ws, field = %field.escape_debug(), value = %value, "unreadable stored mark; skipped");
            continue;
        };
        if !convs.contains(conversation.as_str()) {
            continue; // deleted conversation
        }
        let m = out
            .entry((user.clone(), conversation.clone()))
            .or_insert_with(|| StoredMarks {
                user,
                conversation,
                ..StoredMarks::default()
            });
        match entry {
            Entry::Read(seq) => m.read_seq = m.read_seq.max(seq),
            Entry::Mute(on) => m.muted = on,
            Entry::Archive(on) => m.archived = on,
            Entry::HiddenAt(at) => m.hidden_at = at,
        }
    }
    let mut out: Vec<StoredMarks> = out.into_values().collect();
    out.sort_by(|a, b| (&a.user, &a.conversation).cmp(&(&b.user, &b.conversation)));
    out
}
