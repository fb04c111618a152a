//! Action rules of docs/access-policy.md ("who may send, assign, close, change privacy,
//! edit"), pure like the access rules. Each refuses with a [`Denial`], whose
//! text the operations hand to the client verbatim.

use super::{decide, is_involved, Access};
use crate::domain::{
    Conversation, DirectMessages, GroupCreate, Id, Lookup, Message, Permission, Role, Sender, User,
    WorkspaceSettings,
};

/// Why an action is refused. `Display` is the message clients get.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("{what} needs {} access; you have {}", want.as_str(), have.as_str())]
    NeedsAccess {
        what: String,
        want: Access,
        have: Access,
    },
    #[error(
        "{assignee} would not have write access to the conversation once assigned ({explanation})"
    )]
    AssigneeWithoutWrite { assignee: Id, explanation: String },
    #[error("only customer conversations can be private or public")]
    NoPrivacy,
    #[error("changing privacy needs write access and involvement, or administer with read")]
    PrivacyNeedsInvolvement,
    #[error("editing messages is switched off in this workspace")]
    EditingOff,
    #[error("only the sender may edit or delete a message")]
    NotSender,
    #[error("the edit window of {window_secs} s has passed")]
    EditWindowPassed { window_secs: u64 },
    #[error("group_create is {0:?} in this workspace")]
    GroupCreate(GroupCreate),
    #[error("only users of the same workspace can be messaged")]
    OtherWorkspace,
    #[error("direct messages are limited to internal users in this workspace")]
    DirectMessagesInternalOnly,
    #[error("direct messages are switched off in this workspace")]
    DirectMessagesOff,
    /// The acting agent is not (or no longer) in the directory.
    #[error("unknown user")]
    UnknownActor,
    #[error("adapters post to customer conversations only")]
    AdapterNotCustomer,
}

pub type Verdict = Result<(), Denial>;

fn need(have: Access, want: Access, what: &str) -> Verdict {
    if have >= want {
        Ok(())
    } else {
        Err(Denial::NeedsAccess {
            what: what.to_owned(),
            want,
            have,
        })
    }
}

/// Send a message, assign, unassign, add/remove collaborators, close, reopen.
pub fn may_write(dir: &impl Lookup, user: &User, conv: &Conversation, what: &str) -> Verdict {
    need(decide(dir, user, conv).access, Access::Write, what)
}

/// Start a customer conversation on a channel (an agent texts a customer
/// first): the agent needs `write` to the conversation as it would open
/// (`new`: open, on the channel, assigned to them, with the privacy asked
/// for). The access rules then decide as for any conversation of the
/// channel: a restricted channel needs a `read_write` or `full` grant (or
/// the admin rule), a `read_only` grant is not enough.
pub fn may_start_on_channel(dir: &impl Lookup, user: &User, new: &Conversation) -> Verdict {
    need(
        decide(dir, user, new).access,
        Access::Write,
        "starting a conversation on this channel",
    )
}

/// The new assignee must hold `write` once the assignment is made.
pub fn may_be_assigned(dir: &impl Lookup, assignee: &User, after: &Conversation) -> Verdict {
    if decide(dir, assignee, after).access == Access::Write {
        Ok(())
    } else {
        Err(Denial::AssigneeWithoutWrite {
            assignee: assignee.id.clone(),
            explanation: decide(dir, assignee, after).explain(),
        })
    }
}

/// Make private / public: `write` and involved, or `administer` with `read`.
pub fn may_change_privacy(dir: &impl Lookup, user: &User, conv: &Conversation) -> Verdict {
    if !conv.kind.has_privacy() {
        return Err(Denial::NoPrivacy);
    }
    let access = decide(dir, user, conv).access;
    if (access == Access::Write && is_involved(user, conv))
        || (user.has(Permission::Administer) && access >= Access::Read)
    {
        Ok(())
    } else {
        Err(Denial::PrivacyNeedsInvolvement)
    }
}

/// Hide, mute, archive (per user): `read`.
pub fn may_read(dir: &impl Lookup, user: &User, conv: &Conversation, what: &str) -> Verdict {
    need(decide(dir, user, conv).access, Access::Read, what)
}

/// Edit or delete a message: only its sender, only within the edit window.
pub fn may_edit(
    settings: &WorkspaceSettings,
    user: &User,
    message: &Message,
    now_ms: u64,
) -> Verdict {
    let Some(window) = settings.edit_window_secs else {
        return Err(Denial::EditingOff);
    };
    if message.sender != Sender::User(user.id.clone()) {
        return Err(Denial::NotSender);
    }
    if now_ms.saturating_sub(message.ts) > window.saturating_mul(1000) {
        return Err(Denial::EditWindowPassed {
            window_secs: window,
        });
    }
    Ok(())
}

/// Create a group conversation under the workspace's `group_create` setting.
pub fn may_create_group(settings: &WorkspaceSettings, user: &User) -> Verdict {
    let ok = match settings.group_create {
        GroupCreate::Everyone => true,
        GroupCreate::Internal => user.internal,
        GroupCreate::Admins => user.role == Role::Admin,
    };
    if ok {
        Ok(())
    } else {
        Err(Denial::GroupCreate(settings.group_create))
    }
}

/// Direct-message or mention `to` under the `direct_messages` setting.
pub fn may_message_directly(settings: &WorkspaceSettings, from: &User, to: &User) -> Verdict {
    if from.workspace != to.workspace {
        return Err(Denial::OtherWorkspace);
    }
    match settings.direct_messages {
        DirectMessages::Everyone => Ok(()),
        DirectMessages::InternalOnly if from.internal && to.internal => Ok(()),
        DirectMessages::InternalOnly => Err(Denial::DirectMessagesInternalOnly),
        DirectMessages::Off => Err(Denial::DirectMessagesOff),
    }
}
