//! Routing: inbound customer messages to their thread's conversation, and
//! round-robin assignment of the conversations waiting on a channel.

use crate::assign;
use crate::domain::{
    Change, Channel, Contact, Conversation, EntityKind, Id, Lookup, Status, StatusEvent,
    StatusKind, User,
};
use crate::policy::{actions, Denial};
use crate::store::StoreError;

use super::message::Draft;
use super::{new_id, Actor, Gateway, OpError, Posted};

/// What an agent names to text a customer first (`create_conversation`
/// with `kind: "customer"`).
#[derive(Clone, Debug)]
pub struct Outreach {
    pub channel: Id,
    pub contact: Id,
    /// The adapter's thread key (e.g. the customer's number); without one
    /// a new conversation always opens.
    pub thread: Option<String>,
    /// Privacy of a conversation this opens; an open conversation of the
    /// thread keeps its own.
    pub private: bool,
}

/// Where an inbound message goes: a channel and the adapter's thread key on it.
#[derive(Clone, Copy, Debug)]
pub struct ThreadKey<'a> {
    pub channel: &'a str,
    pub thread: &'a str,
}

/// `contact` of `POST /v1/inbound`: an id, or a contact to create if missing.
pub enum InboundContact {
    Id(Id),
    New(Contact),
}

impl Gateway {
    /// Routes an inbound customer message to its thread's open conversation,
    /// opening (and round-robin assigning) a new one when there is none. A
    /// closed conversation releases its thread: the next message opens a new one.
    pub async fn inbound(
        &self,
        ws: &str,
        at: ThreadKey<'_>,
        contact: InboundContact,
        draft: Draft,
        idempotency_key: Option<String>,
    ) -> Result<(Posted, bool), OpError> {
        let ThreadKey {
            channel: channel_id,
            thread,
        } = at;
        let ws = ws.to_owned();
        let channel = self
            .get_channel(&ws, channel_id)
            .map_err(|_| OpError::invalid("channel", format!("unknown channel {channel_id:?}")))?;
        let contact_id = match contact {
            InboundContact::Id(id) => {
                let reference = ("contact".to_owned(), EntityKind::Contact, id.as_str());
                self.check_references(&ws, [reference])?;
                id
            }
            InboundContact::New(mut k) => {
                k.workspace = ws.clone();
                let exists = self.hub.read(&ws, |d| d.contacts.contains_key(&k.id));
                if !exists {
                    self.put_contact(k.clone()).await?;
                }
                k.id
            }
        };
        let (conversation, created) = match self.hub.thread_holder(&ws, channel_id, thread) {
            Some(id) => (id, false),
            None => {
                let mut conv = Conversation::new_customer(
                    new_id("v"),
                    ws.clone(),
                    channel.id.clone(),
                    contact_id.clone(),
                );
                conv.thread = Some(thread.to_owned());
                conv.team = channel.team.clone();
                self.open_thread(&ws, conv, None).await?
            }
        };
        let posted = self
            .post_message(
                Actor::system(&ws),
                &conversation,
                draft,
                Some(contact_id),
                idempotency_key,
            )
            .await?;
        if created {
            self.enqueue_for_assignment(&ws, &conversation).await?;
            self.drain_waiting(&ws).await;
        }
        Ok((posted, created))
    }

    /// An agent texts a customer first: the message joins the open
    /// conversation of the (channel, thread) if there is one, its privacy
    /// untouched (SMS threads by number pair: one thread, one conversation);
    /// else a new conversation opens, assigned to the agent. The agent
    /// needs write access to what the conversation would be
    /// ([`actions::may_start_on_channel`]); joining, write access to the one
    /// that is. Whether a conversation was opened.
    pub async fn start_conversation(
        &self,
        user: &User,
        to: Outreach,
        draft: Draft,
        client_id: Option<String>,
    ) -> Result<(Posted, bool), OpError> {
        let ws = user.workspace.clone();
        let channel = self.get_channel(&ws, &to.channel).map_err(|_| {
            OpError::invalid("channel", format!("unknown channel {:?}", to.channel))
        })?;
        self.get_contact(&ws, &to.contact).map_err(|_| {
            OpError::invalid("contact", format!("unknown contact {:?}", to.contact))
        })?;
        if to.thread.as_ref().is_some_and(String::is_empty) {
            return Err(OpError::invalid("thread", "empty thread key"));
        }
        let held = to
            .thread
            .as_deref()
            .and_then(|t| self.hub.thread_holder(&ws, &channel.id, t));
        let (conversation, created) = match held {
            Some(id) => (id, false),
            None => {
                let mut conv = Conversation::new_customer(
                    new_id("v"),
                    ws.clone(),
                    channel.id.clone(),
                    to.contact.clone(),
                );
                conv.thread = to.thread.clone();
                conv.team = channel.team.clone();
                conv.assignee = Some(user.id.clone());
                conv.private = to.private;
                self.hub.read(&ws, |dir| {
                    let me = dir.user(&user.id).ok_or(Denial::UnknownActor)?;
                    actions::may_start_on_channel(dir, me, &conv)
                })?;
                self.open_thread(&ws, conv, Some(user.id.clone())).await?
            }
        };
        let actor = Actor::agent(user);
        let posted = self
            .post_message(actor, &conversation, draft, None, client_id)
            .await?;
        Ok((posted, created))
    }

    /// Opens a conversation (for its thread, if it has one), or joins the
    /// one another request opened for the thread first; whether this call
    /// opened it.
    async fn open_thread(
        &self,
        ws: &str,
        conv: Conversation,
        by: Option<Id>,
    ) -> Result<(Id, bool), OpError> {
        let id = conv.id.clone();
        let threaded = conv.thread.is_some();
        let change = Change::Conversation {
            conversation: conv,
            status: StatusEvent {
                event: StatusKind::Created,
                by,
                user: None,
            },
        };
        if !threaded {
            self.store.commit(ws, change).await?;
            return Ok((id, true));
        }
        // Atomic across nodes: of concurrent first messages of a
        // thread, one opens the conversation, the others join it.
        match self.store.commit_thread(ws, change).await {
            Ok(_) => Ok((id, true)),
            Err(StoreError::ThreadTaken(holder)) => Ok((holder, false)),
            Err(e) => Err(e.into()),
        }
    }

    /// Queues a conversation for round-robin if its channel auto-assigns.
    pub(super) async fn enqueue_for_assignment(
        &self,
        ws: &str,
        conversation: &str,
    ) -> Result<(), OpError> {
        let channel = self.hub.read(ws, |d| {
            let conv = d.conversations.get(conversation)?;
            let ch = conv.channel.as_deref().and_then(|c| d.channels.get(c))?;
            auto_assigns(ch).then(|| ch.id.clone())
        });
        if let Some(channel) = channel {
            self.store.push_waiting(ws, &channel, conversation).await?;
        }
        Ok(())
    }

    /// Assigns waiting conversations, oldest first, while someone is eligible.
    /// Errors are logged: the queue stays and the next trigger retries.
    pub async fn drain_waiting(&self, ws: &str) {
        if let Err(e) = self.try_drain(ws).await {
            tracing::warn!(workspace = ws, error = %e, "round-robin drain failed; will retry");
        }
    }

    /// Who is online for round robin: the cluster's presence when nodes share
    /// the store, else this node's connections.
    async fn online_users(&self, ws: &str) -> Result<Vec<Id>, OpError> {
        if self.store.shared() {
            Ok(self.store.online_users(ws).await?)
        } else {
            Ok(self.hub.online_here(ws))
        }
    }

    async fn try_drain(&self, ws: &str) -> Result<(), OpError> {
        let channels: Vec<Id> = self.hub.read(ws, |d| {
            d.channels
                .values()
                .filter(|c| auto_assigns(c))
                .map(|c| c.id.clone())
                .collect()
        });
        for channel in channels {
            for conv_id in self.store.waiting(ws, &channel).await? {
                let online = self.online_users(ws).await?;
                let picked = self.hub.read_state(ws, |state| {
                    let ch = state.dir.channels.get(&channel)?;
                    let conv = state.dir.conversations.get(&conv_id).cloned();
                    let pool = assign::pool_members(ch, state.dir.users.values());
                    let now = chrono::Utc::now();
                    let eligible: Vec<Id> = pool
                        .iter()
                        .filter(|id| {
                            state.dir.users.get(*id).is_some_and(|u| {
                                let st = assign::AgentState {
                                    online: online.contains(id),
                                    open_assigned: state.open_assigned(id),
                                };
                                assign::is_eligible(ch, u, &st, now)
                            })
                        })
                        .cloned()
                        .collect();
                    Some((pool, eligible, conv))
                });
                let Some((pool, eligible, conv)) = picked else {
                    break;
                };
                let Some(conv) = conv else {
                    // Not (yet) known to this node: in a cluster another node may
                    // have created it a moment ago. That node drains right after
                    // queueing it; leave it in the queue.
                    continue;
                };
                let Some(mut conv) =
                    Some(conv).filter(|c| c.status == Status::Open && c.assignee.is_none())
                else {
                    // Closed, assigned by hand or deleted meanwhile: leave the queue.
                    self.store.take_waiting(ws, &channel, &conv_id).await?;
                    continue;
                };
                if eligible.is_empty() {
                    break;
                }
                if !self.store.take_waiting(ws, &channel, &conv_id).await? {
                    continue; // another node took it
                }
                let Some(agent) = self.store.rotate(ws, &channel, &pool, &eligible).await? else {
                    self.store.push_waiting(ws, &channel, &conv_id).await?;
                    break;
                };
                let base = conv.clone();
                conv.assignee = Some(agent);
                let status = StatusEvent {
                    event: StatusKind::Assigned,
                    by: None,
                    user: None,
                };
                match self
                    .commit_conversation(ws, conv, status, Some(&base))
                    .await
                {
                    // Assigned or closed by someone else meanwhile: leave it be.
                    Err(OpError::Conflict(_)) => continue,
                    other => {
                        other?;
                    }
                }
                metrics::counter!("switchboard_round_robin_assignments_total").increment(1);
            }
        }
        Ok(())
    }
}

fn auto_assigns(channel: &Channel) -> bool {
    channel.auto_assign.as_ref().is_some_and(|a| a.enabled)
}
