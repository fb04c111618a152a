//! The one place that spells Redis key names (layout: the table in the
//! module doc of [`super`]). Every key of a workspace carries the hash tag
//! `{ws}`, so a workspace's data lives in one slot and a script touching it
//! can run on Redis Cluster.

/// Every workspace id ever committed to: the only key outside a workspace's
/// slot. Never touched by a script (see [`super::commit`]).
pub const WORKSPACES: &str = "sb:workspaces";

/// A workspace's hashes the commit script writes, by the name it knows them by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hash {
    Users,
    Channels,
    Contacts,
    Conversations,
    Threads,
    Seqs,
    Activity,
    Marks,
    /// Message id → `<seq> <conversation>` (for `locate_message`).
    Messages,
}

impl Hash {
    /// The name in the commit script's table of `KEYS` (and in the key).
    pub fn name(self) -> &'static str {
        match self {
            Hash::Users => "users",
            Hash::Channels => "channels",
            Hash::Contacts => "contacts",
            Hash::Conversations => "conversations",
            Hash::Threads => "threads",
            Hash::Seqs => "seqs",
            Hash::Activity => "activity",
            Hash::Marks => "marks",
            Hash::Messages => "messages",
        }
    }
}

/// The keys of one workspace.
#[derive(Clone, Copy, Debug)]
pub struct Keys<'a> {
    ws: &'a str,
}

impl<'a> Keys<'a> {
    pub fn of(ws: &'a str) -> Keys<'a> {
        Keys { ws }
    }

    fn key(&self, suffix: &str) -> String {
        format!("sb:{{{}}}:{suffix}", self.ws)
    }

    pub fn hash(&self, hash: Hash) -> String {
        self.key(hash.name())
    }

    pub fn settings(&self) -> String {
        self.key("settings")
    }

    /// The workspace's commit counter (orders the bus).
    pub fn commits(&self) -> String {
        self.key("commits")
    }

    /// A conversation's history (sorted set, score = seq).
    pub fn history(&self, conversation: &str) -> String {
        self.key(&format!("h:{conversation}"))
    }

    /// The record of one idempotency key of a conversation.
    pub fn idempotency(&self, conversation: &str, key: &str) -> String {
        self.key(&format!("idem:{}:{conversation}{key}", conversation.len()))
    }

    pub fn online(&self) -> String {
        self.key("online")
    }

    pub fn rotation(&self, channel: &str) -> String {
        self.key(&format!("rr:{channel}"))
    }

    pub fn waiting(&self, channel: &str) -> String {
        self.key(&format!("wait:{channel}"))
    }

    pub fn audit(&self) -> String {
        self.key("audit")
    }

    /// Deliveries to channel adapters (a stream, written by the commit script).
    pub fn outbox(&self) -> String {
        self.key("outbox")
    }

    /// The node delivering the workspace's outbox (a lease: `SET NX PX`).
    pub fn outbox_lease(&self) -> String {
        self.key("outbox:lease")
    }

    /// A channel's dead letters (a list, newest first).
    pub fn outbox_dead(&self, channel: &str) -> String {
        self.key(&format!("outbox:dead:{channel}"))
    }
}

/// Field of the `threads` hash: `{byte length of channel}:{channel}{thread}`
/// (unambiguous whatever the ids contain; the commit script computes the
/// same from a stored conversation).
pub fn thread_field(channel: &str, thread: &str) -> String {
    format!("{}:{channel}{thread}", channel.len())
}

/// Field of the `marks` hash.
pub fn mark_field(user: &str, conversation: &str, kind: &str) -> String {
    format!("{user}\n{conversation}\n{kind}")
}
