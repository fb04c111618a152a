//! Plain data of the directory: users, channels, contacts, conversations,
//! messages — with the field names and defaults of the policy-case world format
//! (`tests/worlds/README.md`), so a world file, the admin API and the
//! policy engine all speak the same language.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

pub type Id = String;

fn default_workspace() -> Id {
    "w1".to_owned()
}
fn default_true() -> bool {
    true
}
fn default_permissions() -> Vec<Permission> {
    vec![Permission::Chats]
}
fn default_visibility_groups() -> Vec<String> {
    vec!["*".to_owned()]
}

#[derive(utoipa::ToSchema, schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    TeamAdmin,
    #[default]
    Staff,
}

impl Role {
    pub fn default_scope(self) -> Scope {
        match self {
            Role::Admin => Scope::All,
            Role::TeamAdmin => Scope::Team,
            Role::Staff => Scope::OwnAndUnassigned,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::TeamAdmin => "team_admin",
            Role::Staff => "staff",
        }
    }
}

#[derive(utoipa::ToSchema, schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    Chats,
    ViewAll,
    Administer,
    New,
}

/// Scopes nest: `own` ⊂ `own_and_unassigned` ⊂ `team` ⊂ `all`, so `Ord` is inclusion.
#[derive(utoipa::ToSchema, schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Own,
    OwnAndUnassigned,
    Team,
    All,
}

#[derive(utoipa::ToSchema, schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

#[derive(utoipa::ToSchema, schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    pub tz: String,
    pub days: Vec<Weekday>,
    /// `"HH:MM-HH:MM"` in `tz`; an end before the start spans midnight.
    pub hours: String,
}

#[derive(utoipa::ToSchema, schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub id: Id,
    #[serde(default = "default_workspace")]
    pub workspace: Id,
    #[serde(default)]
    pub role: Role,
    #[serde(default = "default_permissions")]
    pub permissions: Vec<Permission>,
    #[serde(default)]
    pub scope: Option<Scope>,
    #[serde(default)]
    pub teams: Vec<Id>,
    #[serde(default)]
    pub manager: Option<Id>,
    #[serde(default = "default_visibility_groups")]
    pub visibility_groups: Vec<String>,
    #[serde(default = "default_true")]
    pub internal: bool,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default)]
    pub schedule: Option<Schedule>,
}

impl User {
    /// Every reference this user makes, with the field naming it (a user
    /// managing themself refers to nothing else).
    pub fn references(&self) -> Vec<(String, EntityKind, &str)> {
        self.manager
            .iter()
            .filter(|m| **m != self.id)
            .map(|m| ("manager".to_owned(), EntityKind::User, m.as_str()))
            .collect()
    }
    pub fn has(&self, p: Permission) -> bool {
        self.permissions.contains(&p)
    }
    pub fn effective_scope(&self) -> Scope {
        self.scope.unwrap_or_else(|| self.role.default_scope())
    }
    pub fn in_team(&self, team: &str) -> bool {
        self.teams.iter().any(|t| t == team)
    }
    /// A `team_admin` administers every team they belong to.
    pub fn administers(&self, team: &str) -> bool {
        self.role == Role::TeamAdmin && self.in_team(team)
    }
    pub fn sees_group(&self, group: &str) -> bool {
        self.visibility_groups
            .iter()
            .any(|g| g == "*" || g == group)
    }
}

/// Grant levels, ordered so the highest grant wins.
#[derive(utoipa::ToSchema, schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantLevel {
    ReadOnly,
    ReadWrite,
    Full,
}

/// `user:<id>` or `role:<role>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    User(Id),
    Role(Role),
}

impl Subject {
    pub fn matches(&self, user: &User) -> bool {
        match self {
            Subject::User(id) => *id == user.id,
            Subject::Role(role) => *role == user.role,
        }
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::User(id) => write!(f, "user:{id}"),
            Subject::Role(role) => write!(f, "role:{}", role.as_str()),
        }
    }
}

impl std::str::FromStr for Subject {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some(("user", id)) if !id.is_empty() => Ok(Subject::User(id.to_owned())),
            Some(("role", "admin")) => Ok(Subject::Role(Role::Admin)),
            Some(("role", "team_admin")) => Ok(Subject::Role(Role::TeamAdmin)),
            Some(("role", "staff")) => Ok(Subject::Role(Role::Staff)),
            _ => Err(format!(
                "unknown subject {s:?} (expected user:<id> or role:admin|team_admin|staff)"
            )),
        }
    }
}

impl Serialize for Subject {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Subject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(utoipa::ToSchema, schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub subject: Subject,
    pub level: GrantLevel,
}

#[derive(utoipa::ToSchema, schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ChannelVisibility {
    #[default]
    All,
    Own,
    OwnAndUnassigned,
}

impl ChannelVisibility {
    pub fn as_scope(self) -> Scope {
        match self {
            ChannelVisibility::All => Scope::All,
            ChannelVisibility::Own => Scope::Own,
            ChannelVisibility::OwnAndUnassigned => Scope::OwnAndUnassigned,
        }
    }
}

#[derive(utoipa::ToSchema, schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AutoAssign {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub pool: Vec<Subject>,
    #[serde(default)]
    pub require_online: bool,
    #[serde(default)]
    pub max_open_per_agent: Option<u32>,
}

#[derive(utoipa::ToSchema, schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    pub id: Id,
    #[serde(default = "default_workspace")]
    pub workspace: Id,
    #[serde(default)]
    pub grants: Vec<Grant>,
    #[serde(default)]
    pub visibility: ChannelVisibility,
    #[serde(default)]
    pub team: Option<Id>,
    #[serde(default)]
    pub auto_assign: Option<AutoAssign>,
    /// Where the channel's adapter receives agents' messages (issue 13).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound: Option<super::outbound::Outbound>,
}

impl Channel {
    /// An empty grant list means the channel is unrestricted.
    pub fn is_restricted(&self) -> bool {
        !self.grants.is_empty()
    }
    /// Every reference this channel makes, with the field naming it.
    pub fn references(&self) -> Vec<(String, EntityKind, &str)> {
        self.user_subjects()
            .into_iter()
            .map(|(field, id)| (field, EntityKind::User, id))
            .collect()
    }
    /// Every `user:<id>` this channel names, with the field naming it.
    pub fn user_subjects(&self) -> Vec<(String, &str)> {
        let grants = self
            .grants
            .iter()
            .enumerate()
            .filter_map(|(j, g)| match &g.subject {
                Subject::User(id) => Some((format!("grants[{j}].subject"), id.as_str())),
                Subject::Role(_) => None,
            });
        let pool = self
            .auto_assign
            .iter()
            .flat_map(|a| a.pool.iter().enumerate())
            .filter_map(|(j, s)| match s {
                Subject::User(id) => Some((format!("auto_assign.pool[{j}]"), id.as_str())),
                Subject::Role(_) => None,
            });
        grants.chain(pool).collect()
    }
    /// Highest grant the user holds on this channel (ignores the admin rule).
    pub fn granted_level(&self, user: &User) -> Option<GrantLevel> {
        self.grants
            .iter()
            .filter(|g| g.subject.matches(user))
            .map(|g| g.level)
            .max()
    }
}

#[derive(utoipa::ToSchema, schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    pub id: Id,
    #[serde(default = "default_workspace")]
    pub workspace: Id,
    #[serde(default)]
    pub owner: Option<Id>,
    #[serde(default)]
    pub visibility_group: Option<String>,
    #[serde(default = "default_true")]
    pub known: bool,
}

#[derive(utoipa::ToSchema, schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ConversationKind {
    #[default]
    Customer,
    Direct,
    Group,
    Item,
}

/// What each kind of conversation allows. Every question is an exhaustive
/// `match`, so a new kind does not compile until each rule has decided about it.
impl Contact {
    /// Every reference this contact makes, with the field naming it.
    pub fn references(&self) -> Vec<(String, EntityKind, &str)> {
        self.owner
            .iter()
            .map(|o| ("owner".to_owned(), EntityKind::User, o.as_str()))
            .collect()
    }
}

impl ConversationKind {
    /// Carried by a channel: has a channel and a contact, and adapters post to it.
    pub fn on_channel(self) -> bool {
        match self {
            ConversationKind::Customer => true,
            ConversationKind::Direct | ConversationKind::Group | ConversationKind::Item => false,
        }
    }
    /// Can have an assignee (manual, round robin, waitlist) and shows in assignment views.
    pub fn assignable(self) -> bool {
        match self {
            ConversationKind::Customer => true,
            ConversationKind::Direct | ConversationKind::Group | ConversationKind::Item => false,
        }
    }
    /// Channel adapters (system actors) may post messages into it.
    pub fn adapter_writable(self) -> bool {
        match self {
            ConversationKind::Customer => true,
            ConversationKind::Direct | ConversationKind::Group | ConversationKind::Item => false,
        }
    }
    /// Can be made private or public.
    pub fn has_privacy(self) -> bool {
        match self {
            ConversationKind::Customer => true,
            ConversationKind::Direct | ConversationKind::Group | ConversationKind::Item => false,
        }
    }
}

#[derive(utoipa::ToSchema, schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    #[default]
    Open,
    Closed,
}

#[derive(utoipa::ToSchema, schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemLevel {
    ReadOnly,
    ReadWrite,
    Admin,
}

#[derive(utoipa::ToSchema, schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conversation {
    pub id: Id,
    #[serde(default = "default_workspace")]
    pub workspace: Id,
    #[serde(default)]
    pub kind: ConversationKind,
    #[serde(default)]
    pub channel: Option<Id>,
    #[serde(default)]
    pub contact: Option<Id>,
    #[serde(default)]
    pub author: Option<Id>,
    #[serde(default)]
    pub participants: Vec<Id>,
    #[serde(default)]
    pub assignee: Option<Id>,
    #[serde(default)]
    pub team: Option<Id>,
    #[serde(default)]
    pub collaborators: Vec<Id>,
    #[serde(default)]
    pub private: bool,
    #[serde(default)]
    pub status: Status,
    #[serde(default)]
    pub item_acl: BTreeMap<Id, ItemLevel>,
    /// Routing key of a channel adapter's thread (e.g. a phone number); not in
    /// policy worlds, used by `POST /v1/inbound`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
}

impl Conversation {
    pub fn new_customer(id: Id, workspace: Id, channel: Id, contact: Id) -> Self {
        Conversation {
            id,
            workspace,
            kind: ConversationKind::Customer,
            channel: Some(channel),
            contact: Some(contact),
            author: None,
            participants: Vec::new(),
            assignee: None,
            team: None,
            collaborators: Vec::new(),
            private: false,
            status: Status::Open,
            item_acl: BTreeMap::new(),
            thread: None,
        }
    }

    /// A direct or group conversation started by `author` among `participants`
    /// (the author first): no channel, no contact.
    pub fn between_agents(
        id: Id,
        workspace: Id,
        kind: ConversationKind,
        author: Id,
        participants: Vec<Id>,
    ) -> Self {
        Conversation {
            id,
            workspace,
            kind,
            channel: None,
            contact: None,
            author: Some(author),
            participants,
            assignee: None,
            team: None,
            collaborators: Vec::new(),
            private: false,
            status: Status::Open,
            item_acl: BTreeMap::new(),
            thread: None,
        }
    }

    /// The (channel, thread) this conversation routes inbound messages of:
    /// only an open conversation with both holds its thread. The one rule
    /// behind the hub's thread index and both stores' thread maps (the Redis
    /// commit script's `thread_of` is its Lua twin).
    pub fn open_thread(&self) -> Option<(&Id, &str)> {
        match (&self.channel, &self.thread, self.status) {
            (Some(channel), Some(thread), Status::Open) => Some((channel, thread)),
            _ => None,
        }
    }

    pub fn assignment(&self) -> Assignment {
        match (&self.assignee, &self.team) {
            (Some(_), _) => Assignment::Assigned,
            (None, Some(_)) => Assignment::Waitlist,
            (None, None) => Assignment::Unassigned,
        }
    }
    /// The team whose waitlist holds the conversation, if it waits in one.
    pub fn waitlist_team(&self) -> Option<&str> {
        match self.assignee {
            None => self.team.as_deref(),
            Some(_) => None,
        }
    }
    /// What a conversation of its kind must name: a customer conversation
    /// its channel and contact.
    pub fn check_required(&self) -> Result<(), FieldError> {
        if self.kind.on_channel() && (self.channel.is_none() || self.contact.is_none()) {
            let field = if self.channel.is_none() {
                "channel"
            } else {
                "contact"
            };
            return Err(FieldError::new(
                field,
                "required for a customer conversation",
            ));
        }
        Ok(())
    }
    /// Every reference this conversation makes, with the field naming it.
    pub fn references(&self) -> Vec<(String, EntityKind, &str)> {
        let mut out = Vec::new();
        if let Some(ch) = &self.channel {
            out.push(("channel".to_owned(), EntityKind::Channel, ch.as_str()));
        }
        if let Some(k) = &self.contact {
            out.push(("contact".to_owned(), EntityKind::Contact, k.as_str()));
        }
        if let Some(a) = &self.author {
            out.push(("author".to_owned(), EntityKind::User, a.as_str()));
        }
        if let Some(a) = &self.assignee {
            out.push(("assignee".to_owned(), EntityKind::User, a.as_str()));
        }
        for (j, p) in self.participants.iter().enumerate() {
            out.push((format!("participants[{j}]"), EntityKind::User, p.as_str()));
        }
        for (j, p) in self.collaborators.iter().enumerate() {
            out.push((format!("collaborators[{j}]"), EntityKind::User, p.as_str()));
        }
        for p in self.item_acl.keys() {
            out.push((format!("item_acl.{p}"), EntityKind::User, p.as_str()));
        }
        out
    }
    /// Every user this conversation names (author, participants, assignee,
    /// collaborators, item ACL entries).
    pub fn named_users(&self) -> impl Iterator<Item = &Id> {
        self.author
            .iter()
            .chain(self.participants.iter())
            .chain(self.assignee.iter())
            .chain(self.collaborators.iter())
            .chain(self.item_acl.keys())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Assignment {
    Unassigned,
    Waitlist,
    Assigned,
}

/// Workspace-wide settings (not part of policy worlds).
#[derive(utoipa::ToSchema, schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceSettings {
    #[serde(default = "default_workspace")]
    pub id: Id,
    /// Seconds during which a sender may edit or delete their message; `null` switches editing off.
    #[serde(default = "default_edit_window")]
    pub edit_window_secs: Option<u64>,
    #[serde(default)]
    pub group_create: GroupCreate,
    #[serde(default)]
    pub direct_messages: DirectMessages,
}

fn default_edit_window() -> Option<u64> {
    Some(300)
}

impl WorkspaceSettings {
    pub fn new(id: Id) -> Self {
        WorkspaceSettings {
            id,
            edit_window_secs: default_edit_window(),
            group_create: GroupCreate::default(),
            direct_messages: DirectMessages::default(),
        }
    }
}

#[derive(utoipa::ToSchema, schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum GroupCreate {
    Admins,
    Internal,
    #[default]
    Everyone,
}

#[derive(utoipa::ToSchema, schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DirectMessages {
    #[default]
    Everyone,
    InternalOnly,
    Off,
}

/// Who wrote a message.
#[derive(utoipa::ToSchema, schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Sender {
    /// The customer, through a channel adapter.
    Contact(Option<Id>),
    /// An agent.
    User(Id),
}

#[derive(utoipa::ToSchema, schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub id: Id,
    pub conversation: Id,
    pub sender: Sender,
    pub body: String,
    /// Milliseconds since the Unix epoch, set by the gateway when stored.
    pub ts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<serde_json::Value>,
    /// An internal note: seen by the agents who can read the conversation,
    /// never sent to the customer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub note: bool,
    /// Files attached by reference (the gateway stores no file content).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// The latest delivery receipt the channel adapter reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
}

impl Message {
    /// Whether the channel adapter must deliver this message to the
    /// customer: an agent's reply (not a note) in a conversation carried by
    /// a channel. The outbox asks this, and only this.
    pub fn goes_outbound(&self, conv: &Conversation) -> bool {
        self.is_reply() && conv.kind.on_channel()
    }

    /// An agent's message meant for the customer (not an internal note):
    /// the half of [`Message::goes_outbound`] a change can answer without
    /// its conversation (the Redis commit plan asks it; the script checks the
    /// conversation's channel).
    pub fn is_reply(&self) -> bool {
        !self.note && matches!(self.sender, Sender::User(_))
    }
}

/// A file attached to a message, by reference.
#[derive(utoipa::ToSchema, schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    /// `http` or `https` URL where the file lives.
    pub url: String,
    /// File name shown to people.
    pub name: String,
    /// Media type, e.g. `image/png`.
    pub mime: String,
    /// Size in bytes.
    pub size: u64,
}

/// Attachments one message may carry.
pub const MAX_ATTACHMENTS: usize = 10;
/// Longest attachment URL.
pub const MAX_ATTACHMENT_URL_BYTES: usize = 2048;
/// Longest attachment name or media type.
pub const MAX_ATTACHMENT_NAME_BYTES: usize = 256;

/// Checks a message's attachments, naming the field at fault
/// (`attachments[1].url`); `max_size` is the configured largest file.
pub fn validate_attachments(list: &[Attachment], max_size: u64) -> Result<(), FieldError> {
    if list.len() > MAX_ATTACHMENTS {
        return Err(FieldError::new(
            "attachments",
            format!("at most {MAX_ATTACHMENTS} attachments"),
        ));
    }
    for (i, a) in list.iter().enumerate() {
        let field = |name: &str| format!("attachments[{i}].{name}");
        let scheme = a.url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        let host = a.url.split_once("://").map_or("", |(_, rest)| rest);
        if !matches!(scheme.as_deref(), Some("http" | "https")) || host.is_empty() {
            return Err(FieldError::new(field("url"), "must be an http(s) URL"));
        }
        if a.url.len() > MAX_ATTACHMENT_URL_BYTES || a.url.chars().any(char::is_whitespace) {
            return Err(FieldError::new(
                field("url"),
                format!("at most {MAX_ATTACHMENT_URL_BYTES} bytes, no spaces"),
            ));
        }
        for (name, value) in [("name", &a.name), ("mime", &a.mime)] {
            if value.trim().is_empty() {
                return Err(FieldError::new(field(name), "must not be empty"));
            }
            if value.len() > MAX_ATTACHMENT_NAME_BYTES || value.chars().any(char::is_control) {
                return Err(FieldError::new(
                    field(name),
                    format!("at most {MAX_ATTACHMENT_NAME_BYTES} bytes, no control characters"),
                ));
            }
        }
        if a.size > max_size {
            return Err(FieldError::new(
                field("size"),
                format!("larger than the limit of {max_size} bytes"),
            ));
        }
    }
    Ok(())
}

/// Where an outbound message got to, as its channel adapter reports it.
#[derive(utoipa::ToSchema, schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Sent,
    Delivered,
    Read,
    Failed,
}

impl DeliveryStatus {
    /// Whether a receipt of `self` moves a message on from `current`.
    /// Receipts only go forward (`sent` → `delivered` → `read`), since
    /// adapters' callbacks arrive out of order; `failed` can only follow
    /// `sent` (a message that arrived did not fail), and nothing follows it.
    pub fn advances(self, current: Option<DeliveryStatus>) -> bool {
        use DeliveryStatus::*;
        match (current, self) {
            (None, _) => true,
            (Some(Failed), _) | (_, Failed) => current == Some(Sent) && self == Failed,
            (Some(now), next) => next.rank() > now.rank(),
        }
    }

    fn rank(self) -> u8 {
        match self {
            DeliveryStatus::Sent | DeliveryStatus::Failed => 0,
            DeliveryStatus::Delivered => 1,
            DeliveryStatus::Read => 2,
        }
    }
}

/// A message's delivery receipt.
#[derive(utoipa::ToSchema, schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delivery {
    pub status: DeliveryStatus,
    /// Why it failed (`failed` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Milliseconds since the Unix epoch when the gateway recorded it.
    pub ts: u64,
}

/// Longest error text of a `failed` receipt.
pub const MAX_DELIVERY_ERROR_BYTES: usize = 1024;

/// A whole world in the policy-case format. `expect`, `name` and `why` are
/// accepted and ignored by the gateway (so is any other top-level key); the
/// entities refuse unknown fields (`deny_unknown_fields`): a misspelt field
/// is an error naming it, not a silently ignored change.
#[derive(utoipa::ToSchema, schemars::JsonSchema)] // API schemas: src/http/api_docs.rs
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct World {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub users: Vec<User>,
    #[serde(default)]
    pub channels: Vec<Channel>,
    #[serde(default)]
    pub contacts: Vec<Contact>,
    #[serde(default)]
    pub conversations: Vec<Conversation>,
    /// Workspace settings, one per workspace (`id` names it); not in policy
    /// worlds. An import sets them; a workspace without an entry keeps its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<WorkspaceSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<serde_json::Value>,
}

impl World {
    /// The workspace of an object that names none (the world format's default).
    pub fn default_workspace() -> Id {
        default_workspace()
    }

    /// Every workspace this world names (by its entities or settings).
    pub fn workspaces(&self) -> BTreeSet<Id> {
        self.users
            .iter()
            .map(|u| u.workspace.clone())
            .chain(self.channels.iter().map(|c| c.workspace.clone()))
            .chain(self.contacts.iter().map(|c| c.workspace.clone()))
            .chain(self.conversations.iter().map(|c| c.workspace.clone()))
            .chain(self.settings.iter().map(|s| s.id.clone()))
            .collect()
    }

    /// The world cut into one part per workspace it names, in workspace order.
    pub fn split_by_workspace(&self) -> BTreeMap<Id, World> {
        self.workspaces()
            .into_iter()
            .map(|ws| {
                let part = self.part_of(&ws);
                (ws, part)
            })
            .collect()
    }

    /// The objects of one workspace.
    pub fn part_of(&self, ws: &str) -> World {
        World {
            name: None,
            users: self.users_of(ws).cloned().collect(),
            channels: self.channels_of(ws).cloned().collect(),
            contacts: self.contacts_of(ws).cloned().collect(),
            conversations: self.conversations_of(ws).cloned().collect(),
            settings: self.settings_of(ws).cloned().into_iter().collect(),
            expect: None,
        }
    }

    // The one rule of which objects of a world belong to a workspace: every
    // consumer of an import (hub, both stores) reads it through these.
    pub fn users_of<'a>(&'a self, ws: &'a str) -> impl Iterator<Item = &'a User> + 'a {
        self.users.iter().filter(move |u| u.workspace == ws)
    }
    pub fn channels_of<'a>(&'a self, ws: &'a str) -> impl Iterator<Item = &'a Channel> + 'a {
        self.channels.iter().filter(move |c| c.workspace == ws)
    }
    pub fn contacts_of<'a>(&'a self, ws: &'a str) -> impl Iterator<Item = &'a Contact> + 'a {
        self.contacts.iter().filter(move |c| c.workspace == ws)
    }
    pub fn conversations_of<'a>(
        &'a self,
        ws: &'a str,
    ) -> impl Iterator<Item = &'a Conversation> + 'a {
        self.conversations.iter().filter(move |c| c.workspace == ws)
    }
    pub fn settings_of(&self, ws: &str) -> Option<&WorkspaceSettings> {
        self.settings.iter().find(|s| s.id == ws)
    }
}

/// A malformed world or entity: names the offending field, e.g.
/// `conversations[3].assignee: unknown user "u9"`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl Schedule {
    /// Parses `"HH:MM-HH:MM"` into minutes since midnight (`24:00` ends a day).
    pub fn parse_hours(hours: &str) -> Result<(u32, u32), String> {
        let bad = || format!("expected \"HH:MM-HH:MM\", got {hours:?}");
        let (a, b) = hours.split_once('-').ok_or_else(bad)?;
        let parse = |s: &str| {
            chrono::NaiveTime::parse_from_str(s.trim(), "%H:%M")
                .map(|t| chrono::Timelike::hour(&t) * 60 + chrono::Timelike::minute(&t))
                .or_else(|_| {
                    if s.trim() == "24:00" {
                        Ok(24 * 60)
                    } else {
                        Err(bad())
                    }
                })
        };
        Ok((parse(a)?, parse(b)?))
    }

    /// The working hours as (start, end) minutes since midnight; an end
    /// before the start spans midnight.
    pub fn hours(&self) -> Result<(u32, u32), String> {
        Self::parse_hours(&self.hours)
    }

    pub fn time_zone(&self) -> Result<chrono_tz::Tz, String> {
        self.tz
            .parse::<chrono_tz::Tz>()
            .map_err(|_| format!("unknown time zone {:?}", self.tz))
    }
}

/// Checks a schedule's time zone and hours.
pub fn validate_schedule(field: &str, s: &Schedule) -> Result<(), FieldError> {
    s.time_zone()
        .map_err(|e| FieldError::new(format!("{field}.tz"), e))?;
    s.hours()
        .map(|_| ())
        .map_err(|e| FieldError::new(format!("{field}.hours"), e))
}

impl World {
    /// Checks that every id refers to something and ids are unique: what an
    /// evaluator needs of a world file (a reference may cross workspaces in a
    /// snapshot; the policy never follows it). Imports check more:
    /// [`World::validate_import`].
    pub fn validate(&self) -> Result<(), FieldError> {
        self.check(true)
    }

    /// The checks of an import: unique ids and valid schedules here, and
    /// references through [`World::validate_tenancy`] (they may name stored
    /// objects of the same workspace, never another workspace's).
    pub fn validate_import(
        &self,
        existing: impl Fn(EntityKind, &str, &str) -> bool,
    ) -> Result<(), FieldError> {
        self.check(false)?;
        self.validate_tenancy(existing)
    }

    fn check(&self, refs: bool) -> Result<(), FieldError> {
        let mut users = HashSet::new();
        for (i, u) in self.users.iter().enumerate() {
            if u.id.is_empty() {
                return Err(FieldError::new(format!("users[{i}].id"), "empty id"));
            }
            if !users.insert(u.id.as_str()) {
                return Err(FieldError::new(
                    format!("users[{i}].id"),
                    format!("duplicate user {:?}", u.id),
                ));
            }
        }
        let user_ref = |field: String, id: &str| -> Result<(), FieldError> {
            if !refs || users.contains(id) {
                Ok(())
            } else {
                Err(FieldError::new(field, format!("unknown user {id:?}")))
            }
        };
        for (i, u) in self.users.iter().enumerate() {
            if let Some(m) = &u.manager {
                user_ref(format!("users[{i}].manager"), m)?;
            }
            if let Some(s) = &u.schedule {
                validate_schedule(&format!("users[{i}].schedule"), s)?;
            }
        }
        let mut channels = HashSet::new();
        for (i, c) in self.channels.iter().enumerate() {
            if c.id.is_empty() || !channels.insert(c.id.as_str()) {
                return Err(FieldError::new(
                    format!("channels[{i}].id"),
                    format!("empty or duplicate channel {:?}", c.id),
                ));
            }
            for (j, g) in c.grants.iter().enumerate() {
                if let Subject::User(id) = &g.subject {
                    user_ref(format!("channels[{i}].grants[{j}].subject"), id)?;
                }
            }
            if let Some(a) = &c.auto_assign {
                for (j, s) in a.pool.iter().enumerate() {
                    if let Subject::User(id) = s {
                        user_ref(format!("channels[{i}].auto_assign.pool[{j}]"), id)?;
                    }
                }
            }
        }
        let mut contacts = HashSet::new();
        for (i, k) in self.contacts.iter().enumerate() {
            if k.id.is_empty() || !contacts.insert(k.id.as_str()) {
                return Err(FieldError::new(
                    format!("contacts[{i}].id"),
                    format!("empty or duplicate contact {:?}", k.id),
                ));
            }
            if let Some(o) = &k.owner {
                user_ref(format!("contacts[{i}].owner"), o)?;
            }
        }
        let mut convs = HashSet::new();
        for (i, c) in self.conversations.iter().enumerate() {
            let f = |name: &str| format!("conversations[{i}].{name}");
            if c.id.is_empty() || !convs.insert(c.id.as_str()) {
                return Err(FieldError::new(
                    f("id"),
                    format!("empty or duplicate conversation {:?}", c.id),
                ));
            }
            if let Some(ch) = c.channel.as_ref().filter(|_| refs) {
                if !channels.contains(ch.as_str()) {
                    return Err(FieldError::new(
                        f("channel"),
                        format!("unknown channel {ch:?}"),
                    ));
                }
            }
            if let Some(k) = c.contact.as_ref().filter(|_| refs) {
                if !contacts.contains(k.as_str()) {
                    return Err(FieldError::new(
                        f("contact"),
                        format!("unknown contact {k:?}"),
                    ));
                }
            }
            if let Some(a) = &c.author {
                user_ref(f("author"), a)?;
            }
            if let Some(a) = &c.assignee {
                user_ref(f("assignee"), a)?;
            }
            for (j, p) in c.participants.iter().enumerate() {
                user_ref(format!("conversations[{i}].participants[{j}]"), p)?;
            }
            for (j, p) in c.collaborators.iter().enumerate() {
                user_ref(format!("conversations[{i}].collaborators[{j}]"), p)?;
            }
            for p in c.item_acl.keys() {
                user_ref(format!("conversations[{i}].item_acl.{p}"), p)?;
            }
        }
        Ok(())
    }
}

/// The kinds of entity a reference can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntityKind {
    User,
    Channel,
    Contact,
}

impl EntityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntityKind::User => "user",
            EntityKind::Channel => "channel",
            EntityKind::Contact => "contact",
        }
    }
}

/// Checks an id as a key: non-empty, at most [`MAX_ID_BYTES`], no control
/// characters; a workspace id also without `{` `}` (they delimit the Redis hash
/// tag that keeps a workspace's keys together).
pub fn validate_id(field: &str, id: &str, workspace: bool) -> Result<(), FieldError> {
    if id.is_empty() {
        return Err(FieldError::new(field, "empty id"));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(FieldError::new(
            field,
            format!("longer than {MAX_ID_BYTES} bytes"),
        ));
    }
    if id.chars().any(char::is_control) {
        return Err(FieldError::new(field, "control characters are not allowed"));
    }
    if workspace && id.contains(['{', '}']) {
        return Err(FieldError::new(field, "`{` and `}` are not allowed"));
    }
    Ok(())
}

/// Checks an entity's workspace and id as keys.
pub fn validate_key(workspace: &str, id: &str) -> Result<(), FieldError> {
    validate_id("workspace", workspace, true)?;
    validate_id("id", id, false)
}

/// Longest id accepted (users, channels, contacts, conversations, workspaces).
pub const MAX_ID_BYTES: usize = 256;

impl World {
    /// The checks of an import on top of [`World::validate`]: ids are valid
    /// keys, and every reference stays inside the referring object's workspace
    /// (docs/access-policy.md, Entities). A reference may name an object of this
    /// document or, for `upsert`, one that `existing(kind, workspace, id)` says
    /// is already stored. A reference across workspaces is refused exactly like
    /// a reference to nothing, naming the field.
    pub fn validate_tenancy(
        &self,
        existing: impl Fn(EntityKind, &str, &str) -> bool,
    ) -> Result<(), FieldError> {
        let mut defined: HashSet<(EntityKind, &str, &str)> = HashSet::new();
        let ids = self
            .users
            .iter()
            .map(|u| (EntityKind::User, "users", &u.workspace, &u.id))
            .chain(
                self.channels
                    .iter()
                    .map(|c| (EntityKind::Channel, "channels", &c.workspace, &c.id)),
            )
            .chain(
                self.contacts
                    .iter()
                    .map(|c| (EntityKind::Contact, "contacts", &c.workspace, &c.id)),
            );
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (kind, list, ws, id) in ids {
            let i = index.entry(list).or_insert(0);
            validate_id(&format!("{list}[{i}].workspace"), ws, true)?;
            validate_id(&format!("{list}[{i}].id"), id, false)?;
            defined.insert((kind, ws.as_str(), id.as_str()));
            *i += 1;
        }
        for (i, c) in self.conversations.iter().enumerate() {
            validate_id(&format!("conversations[{i}].workspace"), &c.workspace, true)?;
            validate_id(&format!("conversations[{i}].id"), &c.id, false)?;
        }
        let mut with_settings = HashSet::new();
        for (i, s) in self.settings.iter().enumerate() {
            validate_id(&format!("settings[{i}].id"), &s.id, true)?;
            if !with_settings.insert(s.id.as_str()) {
                return Err(FieldError::new(
                    format!("settings[{i}].id"),
                    format!("duplicate settings of workspace {:?}", s.id),
                ));
            }
        }
        let check = |field: String, kind: EntityKind, ws: &str, id: &str| {
            if defined.contains(&(kind, ws, id)) || existing(kind, ws, id) {
                Ok(())
            } else {
                Err(FieldError::new(
                    field,
                    format!("unknown {} {id:?} in workspace {ws:?}", kind.as_str()),
                ))
            }
        };
        // The same references the live API checks one entity at a time
        // (`Directory::check_references`).
        for (i, u) in self.users.iter().enumerate() {
            for (field, kind, id) in u.references() {
                check(format!("users[{i}].{field}"), kind, &u.workspace, id)?;
            }
        }
        for (i, c) in self.channels.iter().enumerate() {
            for (field, kind, id) in c.references() {
                check(format!("channels[{i}].{field}"), kind, &c.workspace, id)?;
            }
        }
        for (i, k) in self.contacts.iter().enumerate() {
            for (field, kind, id) in k.references() {
                check(format!("contacts[{i}].{field}"), kind, &k.workspace, id)?;
            }
        }
        for (i, c) in self.conversations.iter().enumerate() {
            for (field, kind, id) in c.references() {
                check(
                    format!("conversations[{i}].{field}"),
                    kind,
                    &c.workspace,
                    id,
                )?;
            }
        }
        Ok(())
    }
}

/// Read-only lookups the policy needs. Implemented by [`Directory`] and by
/// anything else that holds the entities.
pub trait Lookup {
    fn user(&self, id: &str) -> Option<&User>;
    fn channel(&self, id: &str) -> Option<&Channel>;
    fn contact(&self, id: &str) -> Option<&Contact>;
}

/// Entities indexed by id: the plain-data view of one world.
#[derive(Clone, Debug, Default)]
pub struct Directory {
    pub users: HashMap<Id, User>,
    pub channels: HashMap<Id, Channel>,
    pub contacts: HashMap<Id, Contact>,
    pub conversations: HashMap<Id, Conversation>,
}

impl Directory {
    pub fn from_world(world: &World) -> Self {
        Directory {
            users: world
                .users
                .iter()
                .map(|u| (u.id.clone(), u.clone()))
                .collect(),
            channels: world
                .channels
                .iter()
                .map(|c| (c.id.clone(), c.clone()))
                .collect(),
            contacts: world
                .contacts
                .iter()
                .map(|c| (c.id.clone(), c.clone()))
                .collect(),
            conversations: world
                .conversations
                .iter()
                .map(|c| (c.id.clone(), c.clone()))
                .collect(),
        }
    }
}

impl Directory {
    /// Checks an entity's references (`references()` of users, channels,
    /// contacts, conversations) against this directory, naming the field of
    /// the first that resolves to nothing.
    pub fn check_references<'a>(
        &self,
        references: impl IntoIterator<Item = (String, EntityKind, &'a str)>,
    ) -> Result<(), FieldError> {
        for (field, kind, id) in references {
            if !self.contains(kind, id) {
                return Err(FieldError::new(
                    field,
                    format!("unknown {} {id:?}", kind.as_str()),
                ));
            }
        }
        Ok(())
    }

    /// Whether an entity of this kind and id exists here.
    pub fn contains(&self, kind: EntityKind, id: &str) -> bool {
        match kind {
            EntityKind::User => self.users.contains_key(id),
            EntityKind::Channel => self.channels.contains_key(id),
            EntityKind::Contact => self.contacts.contains_key(id),
        }
    }
}

impl Lookup for Directory {
    fn user(&self, id: &str) -> Option<&User> {
        self.users.get(id)
    }
    fn channel(&self, id: &str) -> Option<&Channel> {
        self.channels.get(id)
    }
    fn contact(&self, id: &str) -> Option<&Contact> {
        self.contacts.get(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world(v: serde_json::Value) -> World {
        serde_json::from_value(v).expect("a world")
    }

    #[test]
    fn a_world_splits_into_one_part_per_workspace() {
        let w = world(serde_json::json!({
            "users": [{"id": "a"}, {"id": "b", "workspace": "w2"}],
            "channels": [{"id": "c", "workspace": "w3"}],
            "settings": [{"id": "w4"}]
        }));
        let parts = w.split_by_workspace();
        let names: Vec<&str> = parts.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [World::default_workspace().as_str(), "w2", "w3", "w4"]
        );
        assert_eq!(parts["w2"].users.len(), 1);
        assert!(parts["w2"].channels.is_empty() && parts["w4"].users.is_empty());
        assert_eq!(parts["w4"].settings.len(), 1);
    }

    #[test]
    fn receipts_only_move_forward() {
        use DeliveryStatus::*;
        assert!(Sent.advances(None) && Failed.advances(None) && Read.advances(None));
        assert!(Delivered.advances(Some(Sent)) && Read.advances(Some(Delivered)));
        assert!(!Sent.advances(Some(Delivered)) && !Delivered.advances(Some(Read)));
        assert!(
            !Read.advances(Some(Read)),
            "the same news again changes nothing"
        );
        assert!(Failed.advances(Some(Sent)) && !Failed.advances(Some(Delivered)));
        assert!(!Delivered.advances(Some(Failed)) && !Failed.advances(Some(Failed)));
    }

    #[test]
    fn only_agents_replies_on_a_channel_go_outbound() {
        let customer = Conversation::new_customer("v".into(), "w".into(), "c".into(), "k".into());
        let direct = Conversation::between_agents(
            "d".into(),
            "w".into(),
            ConversationKind::Direct,
            "u".into(),
            vec!["u".into(), "x".into()],
        );
        let reply: Message = serde_json::from_value(serde_json::json!({
            "id": "m", "conversation": "v", "sender": {"kind": "user", "id": "u"},
            "body": "hi", "ts": 1
        }))
        .expect("a message");
        assert!(reply.goes_outbound(&customer));
        assert!(!reply.goes_outbound(&direct));
        let note = Message {
            note: true,
            ..reply.clone()
        };
        assert!(!note.goes_outbound(&customer), "a note never goes outbound");
        let inbound = Message {
            sender: Sender::Contact(Some("k".into())),
            ..reply
        };
        assert!(!inbound.goes_outbound(&customer));
    }

    #[test]
    fn attachments_are_checked_naming_the_field() {
        let ok = Attachment {
            url: "https://files.example/a.png".into(),
            name: "a.png".into(),
            mime: "image/png".into(),
            size: 10,
        };
        assert!(validate_attachments(std::slice::from_ref(&ok), 10).is_ok());
        let field = |a: Attachment| {
            validate_attachments(&[ok.clone(), a], 10)
                .expect_err("refused")
                .field
        };
        for url in ["ftp://x/y", "https://", "x", "https://a b"] {
            let bad = Attachment {
                url: url.into(),
                ..ok.clone()
            };
            assert_eq!(field(bad), "attachments[1].url", "{url}");
        }
        let bad = Attachment {
            mime: "".into(),
            ..ok.clone()
        };
        assert_eq!(field(bad), "attachments[1].mime");
        let bad = Attachment {
            size: 11,
            ..ok.clone()
        };
        assert_eq!(field(bad), "attachments[1].size");
        let many = vec![ok; MAX_ATTACHMENTS + 1];
        assert_eq!(
            validate_attachments(&many, 10).expect_err("too many").field,
            "attachments"
        );
    }

    /// The live API checks one entity's references with the same lists an
    /// import checks a whole world with.
    #[test]
    fn references_resolve_in_a_directory_naming_the_field() {
        let w = world(serde_json::json!({
            "users": [{"id": "u"}],
            "contacts": [{"id": "k", "owner": "u"}]
        }));
        let dir = Directory::from_world(&w);
        let conv: Conversation = serde_json::from_value(serde_json::json!({
            "id": "v", "channel": "nope", "contact": "k", "assignee": "u"
        }))
        .expect("a conversation");
        let e = dir.check_references(conv.references()).unwrap_err();
        assert_eq!(e.to_string(), r#"channel: unknown channel "nope""#);
        let me: User =
            serde_json::from_value(serde_json::json!({"id": "x", "manager": "x"})).expect("a user");
        assert!(dir.check_references(me.references()).is_ok());
        let k = &w.contacts[0];
        assert!(dir.check_references(k.references()).is_ok());
    }
}
