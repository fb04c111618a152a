//! What a session wrote of each conversation's sequence, so that a `resume`
//! replay and the live stream never repeat an event or go back — in bounded
//! memory.
//!
//! Why it exists: the hub queues a connection's frames of a conversation in
//! increasing `seq`, but a `resume` writes stored events straight to the
//! socket, and live frames of the same events may be queued already (or
//! arrive later, behind a lagging bus); a late `resume` may also name events
//! the live stream already wrote. Each side skips what the other wrote.
//!
//! Why it is bounded: overlaps only happen within a short window (a queue's
//! worth of frames, a bus lag, a request crossing frames on the wire). So
//! positions are kept in two generations: the current one takes every write;
//! when it holds [`GENERATION`] conversations and is at least [`MIN_AGE`]
//! old, it becomes the previous one and the one before is dropped. Every
//! position written in the last [`MIN_AGE`] (and of the last [`GENERATION`]
//! conversations written) is remembered; a session holds at most about
//! 2 × [`GENERATION`] of them unless it writes more conversations than that
//! within [`MIN_AGE`]. A conversation the user lost access to is forgotten at
//! once: nothing of it follows until access is granted again, as of its
//! latest `seq`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::hub::{ConvKey, Place};

/// Conversations per generation.
pub const GENERATION: usize = 512;
/// A generation is retired no sooner than this after it started.
pub const MIN_AGE: Duration = Duration::from_secs(30);

/// Looked up once per frame written, hence the fast hasher.
type Positions = HashMap<ConvKey, u64, foldhash::fast::RandomState>;

#[derive(Default)]
pub struct Sent {
    current: Positions,
    /// Made on the first rotation or `resume`: an idle connection carries
    /// one empty map and a pointer.
    more: Option<Box<More>>,
}

#[derive(Default)]
struct More {
    previous: Positions,
    /// When `current` started (or, before the first rotation, when it was
    /// first full: a later start only keeps positions longer).
    since: Option<Instant>,
    /// When the last `resume` read stored events: a revocation applied
    /// before it may be written after the replay, which it must not undo.
    last_replay: Option<Instant>,
}

impl Sent {
    /// Whether a frame from the hub is to be written (and records it). `born`
    /// is when the hub applied it.
    pub fn live(&mut self, place: &Place, born: Instant) -> bool {
        match place {
            Place::Outside => true,
            Place::Event(conv, seq) => self.advance(conv, *seq),
            Place::Granted(conv, seq) => {
                // Repeats no event: written even after a replay went further.
                let seq = self.last(conv).map_or(*seq, |last| last.max(*seq));
                self.record(conv, seq, born);
                true
            }
            Place::Revoked(conv) => {
                let replay = self.more.as_ref().and_then(|m| m.last_replay);
                if replay.is_none_or(|replay| born >= replay) {
                    self.current.remove(conv);
                    if let Some(more) = &mut self.more {
                        more.previous.remove(conv);
                    }
                }
                true
            }
        }
    }

    /// Whether a stored event replayed by `resume` is to be written (and records it).
    pub fn replayed(&mut self, conv: &ConvKey, seq: u64) -> bool {
        self.advance(conv, seq)
    }

    /// A `resume` is about to read stored events.
    pub fn replay_starts(&mut self, at: Instant) {
        self.more.get_or_insert_default().last_replay = Some(at);
    }

    /// Conversations remembered.
    pub fn len(&self) -> usize {
        self.current.len() + self.more.as_ref().map_or(0, |m| m.previous.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn previous(&self) -> Option<&Positions> {
        self.more.as_ref().map(|m| &m.previous)
    }

    fn advance(&mut self, conv: &ConvKey, seq: u64) -> bool {
        // The common case, one lookup: a conversation of the current generation.
        if let Some(last) = self.current.get_mut(conv) {
            if *last >= seq {
                return false;
            }
            *last = seq;
            return true;
        }
        let older = self.previous().and_then(|p| p.get(conv));
        if older.is_some_and(|last| *last >= seq) {
            return false;
        }
        self.record(conv, seq, Instant::now());
        true
    }

    fn last(&self, conv: &ConvKey) -> Option<u64> {
        self.current
            .get(conv)
            .or_else(|| self.previous().and_then(|p| p.get(conv)))
            .copied()
    }

    fn record(&mut self, conv: &ConvKey, seq: u64, now: Instant) {
        if let Some(last) = self.current.get_mut(conv) {
            *last = seq;
            return;
        }
        if self.current.len() >= GENERATION {
            let more = self.more.get_or_insert_default();
            let since = *more.since.get_or_insert(now);
            if now.saturating_duration_since(since) >= MIN_AGE {
                more.previous = std::mem::take(&mut self.current);
                more.since = Some(now);
            }
        }
        if let Some(more) = &mut self.more {
            more.previous.remove(conv);
        }
        self.current.insert(conv.clone(), seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> ConvKey {
        ConvKey::new(&format!("v{i}"))
    }

    #[test]
    fn replay_and_live_never_repeat_or_go_back() {
        let mut sent = Sent::default();
        let now = Instant::now();
        let v = key(1);
        sent.replay_starts(now);
        assert!(sent.replayed(&v, 3));
        assert!(sent.replayed(&v, 4));
        // Live copies of replayed events, then a new one.
        assert!(!sent.live(&Place::Event(v.clone(), 3), now));
        assert!(!sent.live(&Place::Event(v.clone(), 4), now));
        assert!(sent.live(&Place::Event(v.clone(), 5), now));
        // A late resume does not repeat what live wrote.
        assert!(!sent.replayed(&v, 5));
        assert!(sent.replayed(&v, 6));
        assert!(sent.live(&Place::Outside, now));
    }

    #[test]
    fn access_lost_forgets_and_access_granted_is_always_written() {
        let mut sent = Sent::default();
        let start = Instant::now();
        let v = key(1);
        assert!(sent.live(&Place::Event(v.clone(), 7), start));
        let later = start + Duration::from_millis(1);
        assert!(sent.live(&Place::Revoked(v.clone()), later));
        assert!(sent.is_empty());
        // Regained with no event since: the grant is written, and it sets the position.
        assert!(sent.live(&Place::Granted(v.clone(), 7), later));
        assert!(!sent.replayed(&v, 7));
        assert!(sent.live(&Place::Event(v.clone(), 8), later));
    }

    #[test]
    fn a_revocation_older_than_a_replay_does_not_undo_it() {
        // The hub revoked and granted again before a resume read history;
        // both frames were still queued when the replay was written.
        let mut sent = Sent::default();
        let applied = Instant::now();
        let replay = applied + Duration::from_millis(1);
        let v = key(1);
        sent.replay_starts(replay);
        assert!(sent.replayed(&v, 5));
        assert!(sent.replayed(&v, 6));
        assert!(sent.live(&Place::Revoked(v.clone()), applied));
        assert!(sent.live(&Place::Granted(v.clone(), 4), applied));
        assert!(!sent.live(&Place::Event(v.clone(), 5), applied));
        assert!(!sent.live(&Place::Event(v.clone(), 6), applied));
        assert!(sent.live(&Place::Event(v.clone(), 7), applied));
    }

    #[test]
    fn it_stays_bounded_and_remembers_the_recent_window() {
        let mut sent = Sent::default();
        let start = Instant::now();
        // Many conversations quickly: all are remembered within MIN_AGE.
        for i in 0..GENERATION * 3 {
            assert!(sent.live(&Place::Event(key(i), 1), start));
        }
        assert_eq!(sent.len(), GENERATION * 3);
        for i in 0..GENERATION * 3 {
            assert!(!sent.replayed(&key(i), 1), "v{i} forgotten too early");
        }
        // Once a generation is old enough, the one before it goes.
        let later = start + MIN_AGE;
        for i in 0..GENERATION * 4 {
            let conv = key(1_000_000 + i);
            sent.record(&conv, 1, later + MIN_AGE * (i / GENERATION) as u32);
        }
        assert!(sent.len() <= 2 * GENERATION, "{}", sent.len());
        // The last conversations written are still known.
        for i in GENERATION * 3..GENERATION * 4 {
            assert!(!sent.replayed(&key(1_000_000 + i), 1));
        }
    }

    #[test]
    fn a_previous_generation_entry_moves_forward() {
        let mut sent = Sent::default();
        let start = Instant::now();
        let v = key(0);
        sent.record(&v, 3, start);
        // Full at `start`; the next conversation, MIN_AGE later, starts a generation.
        for i in 1..=GENERATION {
            sent.record(&key(i), 1, start);
        }
        sent.record(&key(GENERATION + 1), 1, start + MIN_AGE);
        assert!(sent.previous().is_some_and(|p| p.contains_key(&v)));
        // v is now in the previous generation; it is found and moves to the current one.
        assert!(!sent.live(&Place::Event(v.clone(), 3), start));
        assert!(sent.live(&Place::Event(v.clone(), 4), start));
        assert_eq!(sent.current.get(&v).copied(), Some(4));
        assert!(!sent.previous().is_some_and(|p| p.contains_key(&v)));
    }
}
