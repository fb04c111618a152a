//! The audience of a conversation: which users may read it, and whether they
//! may write. Kept per conversation and changed incrementally, so fan-out never
//! evaluates the policy or scans connections.

use std::collections::HashSet;

use super::state::WorkspaceState;
use crate::domain::{Conversation, Directory, Id, User};
use crate::policy::{self, Access};

/// Index of a user within its workspace (stable for the user's lifetime).
pub type Slot = u32;

/// Maps keyed by slot: small dense integers the node assigns (never a
/// client's bytes), looked up per recipient on the fan-out path, so hashed
/// with foldhash rather than SipHash.
pub type SlotMap<V> = std::collections::HashMap<Slot, V, foldhash::fast::RandomState>;
pub type SlotSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

/// Sorted entries `slot << 1 | write`; a user absent from it has `none`.
/// Four bytes per reader: a 10,000-reader audience is 40 KB.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Audience(Vec<u32>);

fn pack(slot: Slot, access: Access) -> u32 {
    slot << 1 | u32::from(access == Access::Write)
}

fn unpack(e: u32) -> (Slot, Access) {
    let access = if e & 1 == 1 {
        Access::Write
    } else {
        Access::Read
    };
    (e >> 1, access)
}

impl Audience {
    /// Builds from `(slot, access)` pairs in increasing slot order.
    pub fn from_sorted(entries: impl Iterator<Item = (Slot, Access)>) -> Self {
        Audience(
            entries
                .filter(|(_, a)| a.can_read())
                .map(|(s, a)| pack(s, a))
                .collect(),
        )
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn find(&self, slot: Slot) -> Result<usize, usize> {
        self.0.binary_search_by_key(&slot, |e| e >> 1)
    }

    pub fn get(&self, slot: Slot) -> Access {
        match self.find(slot) {
            Ok(i) => unpack(self.0[i]).1,
            Err(_) => Access::None,
        }
    }

    /// Sets one user's access; returns the previous one.
    pub fn set(&mut self, slot: Slot, access: Access) -> Access {
        match (self.find(slot), access) {
            (Ok(i), Access::None) => unpack(self.0.remove(i)).1,
            (Ok(i), a) => {
                let old = unpack(self.0[i]).1;
                self.0[i] = pack(slot, a);
                old
            }
            (Err(_), Access::None) => Access::None,
            (Err(i), a) => {
                self.0.insert(i, pack(slot, a));
                Access::None
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (Slot, Access)> + '_ {
        self.0.iter().map(|&e| unpack(e))
    }

    /// Users who lost read access and users who gained it, going from `self`
    /// to `new` (a merge of two sorted lists: linear, no allocation per user).
    pub fn diff(&self, new: &Audience, mut on: impl FnMut(Slot, Access, Access)) {
        let (mut a, mut b) = (self.iter().peekable(), new.iter().peekable());
        loop {
            match (a.peek().copied(), b.peek().copied()) {
                (None, None) => break,
                (Some((s, old)), None) => {
                    on(s, old, Access::None);
                    a.next();
                }
                (None, Some((s, now))) => {
                    on(s, Access::None, now);
                    b.next();
                }
                (Some((sa, old)), Some((sb, now))) => {
                    if sa < sb {
                        on(sa, old, Access::None);
                        a.next();
                    } else if sb < sa {
                        on(sb, Access::None, now);
                        b.next();
                    } else {
                        if old != now {
                            on(sa, old, now);
                        }
                        a.next();
                        b.next();
                    }
                }
            }
        }
    }
}

/// Keeping audiences current: the policy is evaluated here, on changes,
/// and never on fan-out.
impl WorkspaceState {
    /// The audience of a conversation over every user of the workspace.
    pub(super) fn evaluate(&self, conv: &Conversation) -> Audience {
        evaluate_with(&self.dir, &self.users_by_slot(), conv)
    }

    /// Every slot's user (`None` once deleted), looked up once for a batch of evaluations.
    pub(super) fn users_by_slot(&self) -> Vec<Option<&User>> {
        self.slot_ids
            .iter()
            .map(|id| self.dir.users.get(id))
            .collect()
    }

    /// Audiences of every conversation: O(U × C), spread over the cores.
    pub(super) fn evaluate_all(&self) -> Vec<(Id, Audience)> {
        let users = self.users_by_slot();
        let convs: Vec<&Conversation> = self.dir.conversations.values().collect();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunk = convs.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            let workers: Vec<_> = convs
                .chunks(chunk)
                .map(|part| {
                    let (dir, users) = (&self.dir, &users);
                    scope.spawn(move || {
                        part.iter()
                            .map(|c| (c.id.clone(), evaluate_with(dir, users, c)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap_or_default())
                .collect()
        })
    }

    /// Re-evaluates one conversation for everyone and tells online users who
    /// gained or lost access.
    pub(super) fn refresh_conversation(&mut self, id: &str) {
        let Some(conv) = self.dir.conversations.get(id) else {
            return;
        };
        let new = self.evaluate(conv);
        let entry = self.convs.entry(id.to_owned()).or_default();
        let old = std::mem::replace(&mut entry.audience, new);
        let seq = entry.seq;
        self.notify_diff(id, seq, &old, None);
    }

    pub(super) fn refresh_group(&mut self, ids: Option<HashSet<Id>>) {
        for id in ids.into_iter().flatten() {
            self.refresh_conversation(&id);
        }
    }
}

/// The audience of a conversation over `users` (indexed by slot).
fn evaluate_with(dir: &Directory, users: &[Option<&User>], conv: &Conversation) -> Audience {
    let prepared = policy::Prepared::new(dir, conv);
    Audience::from_sorted(users.iter().enumerate().map(|(s, u)| {
        let access = u.map_or(Access::None, |u| prepared.decide(u).access);
        (s as Slot, access)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_and_diff() {
        let mut a = Audience::default();
        assert_eq!(a.set(5, Access::Write), Access::None);
        assert_eq!(a.set(2, Access::Read), Access::None);
        assert_eq!(a.get(5), Access::Write);
        assert_eq!(a.get(3), Access::None);
        let mut b = a.clone();
        b.set(2, Access::None);
        b.set(7, Access::Read);
        b.set(5, Access::Read);
        let mut changes = Vec::new();
        a.diff(&b, |s, o, n| changes.push((s, o, n)));
        assert_eq!(
            changes,
            vec![
                (2, Access::Read, Access::None),
                (5, Access::Write, Access::Read),
                (7, Access::None, Access::Read)
            ]
        );
    }
}
