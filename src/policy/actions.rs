//! Action rules of docs/access-policy.md ("who may send, assign, close, change privacy,
//! edit"), pure like the access rules. Each returns `Err` with a reason the
//! gateway hands to the client verbatim.

use super::{decide, is_involved, Access};
use crate::domain::{
    Conversation, DirectMessages, GroupCreate, Lookup, Message, Permission, Role, Sender, User,
    WorkspaceSettings,
};

pub type Verdict = Result<(), String>;

fn need(have: Access, want: Access, what: &str) -> Verdict {
    if have >= want {
        Ok(())
    } else {
        Err(format!(
            "{what} needs {} access; you have {}",
            want.as_str(),
            have.as_str()
        ))
    }
}

/// Send a message, assign, unassign, add/remove collaborators, close, reopen.
pub fn may_write(dir: &impl Lookup, user: &User, conv: &Conversation, what: &str) -> Verdict {
    need(decide(dir, user, conv).access, Access::Write, what)
}

/// The new assignee must hold `write` once the assignment is made.
pub fn may_be_assigned(dir: &impl Lookup, assignee: &User, after: &Conversation) -> Verdict {
    if decide(dir, assignee, after).access == Access::Write {
        Ok(())
    } else {
        Err(format!(
            "{} would not have write access to the conversation once assigned ({})",
            assignee.id,
            decide(dir, assignee, after).explain()
        ))
    }
}

/// Make private / public: `write` and involved, or `administer` with `read`.
pub fn may_change_privacy(dir: &impl Lookup, user: &User, conv: &Conversation) -> Verdict {
    if !conv.kind.has_privacy() {
        return Err("only customer conversations can be private or public".into());
    }
    let access = decide(dir, user, conv).access;
    if (access == Access::Write && is_involved(user, conv))
        || (user.has(Permission::Administer) && access >= Access::Read)
    {
        Ok(())
    } else {
        Err("changing privacy needs write access and involvement, or administer with read".into())
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
        return Err("editing messages is switched off in this workspace".into());
    };
    if message.sender != Sender::User(user.id.clone()) {
        return Err("only the sender may edit or delete a message".into());
    }
    if now_ms.saturating_sub(message.ts) > window.saturating_mul(1000) {
        return Err(format!("the edit window of {window} s has passed"));
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
        Err(format!(
            "group_create is {:?} in this workspace",
            settings.group_create
        ))
    }
}

/// Direct-message or mention `to` under the `direct_messages` setting.
pub fn may_message_directly(settings: &WorkspaceSettings, from: &User, to: &User) -> Verdict {
    if from.workspace != to.workspace {
        return Err("only users of the same workspace can be messaged".into());
    }
    match settings.direct_messages {
        DirectMessages::Everyone => Ok(()),
        DirectMessages::InternalOnly if from.internal && to.internal => Ok(()),
        DirectMessages::InternalOnly => {
            Err("direct messages are limited to internal users in this workspace".into())
        }
        DirectMessages::Off => Err("direct messages are switched off in this workspace".into()),
    }
}
