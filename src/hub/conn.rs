//! The hub's handle on one live WebSocket session.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::Poll;

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Close codes of the protocol (docs/protocol.md).
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const IDLE: u16 = 4000;
    pub const TOKEN_EXPIRED: u16 = 4003;
    pub const SLOW_CONSUMER: u16 = 4008;
    pub const RATE_LIMITED: u16 = 4029;

    pub fn reason(code: u16) -> &'static str {
        match code {
            NORMAL => "normal closure",
            GOING_AWAY => "going away",
            POLICY => "policy: user disabled or removed",
            TOO_BIG => "frame too big",
            IDLE => "idle timeout",
            TOKEN_EXPIRED => "token expired",
            SLOW_CONSUMER => "slow consumer: outgoing queue overflowed",
            RATE_LIMITED => "rate limit exceeded",
            _ => "internal error",
        }
    }
}

/// An event's frame, built and serialized once and shared by every
/// recipient's queue (a queue slot is one pointer).
#[derive(Debug)]
pub struct Frame {
    /// Where the frame stands in its conversation's sequence, for the
    /// session's de-duplication against `resume` replays.
    pub place: Place,
    pub text: Utf8Bytes,
    /// When the event was applied, for the delivery latency histogram.
    pub born: std::time::Instant,
}

impl Frame {
    pub fn new(place: Place, text: Utf8Bytes) -> Outbound {
        Arc::new(Frame {
            place,
            text,
            born: std::time::Instant::now(),
        })
    }
}

/// A conversation's id as frames carry it: one allocation per conversation
/// (the hub's `ConvEntry::key`) with its hash taken once, so that a session's
/// check of what it wrote compares a number and a pointer, not the id's
/// bytes, on every frame.
#[derive(Clone, Debug)]
pub struct ConvKey {
    hash: u64,
    id: Arc<str>,
}

impl ConvKey {
    pub fn new(id: &str) -> Self {
        // One seed for the process: keys made apart (live, replay) agree.
        static HASHER: LazyLock<foldhash::fast::RandomState> = LazyLock::new(Default::default);
        ConvKey {
            hash: HASHER.hash_one(id),
            id: Arc::from(id),
        }
    }
}

impl PartialEq for ConvKey {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && (Arc::ptr_eq(&self.id, &other.id) || self.id == other.id)
    }
}

impl Eq for ConvKey {}

impl Hash for ConvKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// A frame's relation to a conversation's sequence. The hub queues each
/// connection's frames of a conversation in increasing `seq`; only a
/// `resume` replay can overlap them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// Outside any conversation's sequence.
    Outside,
    /// An event of the conversation, holding its `seq`: written at most once
    /// per connection, never after a later one.
    Event(ConvKey, u64),
    /// Access gained, as of the conversation's latest `seq`. It repeats no
    /// event, so it is always written.
    Granted(ConvKey, u64),
    /// Access lost: nothing more of the conversation follows until it is
    /// granted again, so a session can forget what it sent of it.
    Revoked(ConvKey),
}

pub type Outbound = Arc<Frame>;

/// One connection's end of the hub: its bounded queue of frames and its
/// close signal, in one allocation shared by the hub's [`ConnHandle`] (which
/// pushes and closes) and the session's [`Inbox`] (which takes).
///
/// The session polls it on every wake-up, so it is one waker slot, an atomic
/// close code and a queue under a short lock (no cancellation token, whose
/// poll takes a lock, and no channel, which allocates a block of slots and a
/// cache-padded header per connection up front). The queue allocates on its
/// first frame and gives its memory back when the session finds it empty at a
/// heartbeat: an idle connection holds no queue memory.
#[derive(Debug)]
pub struct Control {
    code: AtomicU16,
    waker: AtomicWaker,
    queue: Mutex<Queue>,
}

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<Outbound>,
    capacity: usize,
    /// The session ended: nothing more is taken, so pushes fail.
    receiver_gone: bool,
    /// The hub let go of the connection without closing it.
    sender_gone: bool,
}

impl Control {
    /// Asks the session to close with `code`; the first reason wins.
    pub fn close(&self, code: u16) {
        let _ = self
            .code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.waker.wake();
    }

    pub fn code(&self) -> Option<u16> {
        match self.code.load(Ordering::Acquire) {
            0 => None,
            c => Some(c),
        }
    }
}

/// A new connection's two ends: the hub's handle and the session's inbox,
/// with room for `capacity` queued frames.
pub fn channel(id: u64, capacity: usize) -> (ConnHandle, Inbox) {
    let control = Arc::new(Control {
        code: AtomicU16::new(0),
        waker: AtomicWaker::new(),
        queue: Mutex::new(Queue {
            capacity,
            ..Queue::default()
        }),
    });
    (
        ConnHandle {
            id,
            control: control.clone(),
        },
        Inbox { control },
    )
}

/// The hub's handle on one live session (one per connection: dropping it
/// tells the session that nothing more will come).
#[derive(Debug)]
pub struct ConnHandle {
    pub id: u64,
    pub control: Arc<Control>,
}

impl ConnHandle {
    /// Queues `frame` and then `next`, if any, without waiting, with one
    /// wake-up (the session writes both in one batch). A full queue closes
    /// the connection with 4008 rather than dropping the event or stalling
    /// fan-out; the client recovers with `resume`. Returns false when the
    /// connection is gone.
    pub fn push_with(&self, frame: &Outbound, next: Option<&Outbound>) -> bool {
        let mut queue = self.control.queue.lock();
        if queue.receiver_gone {
            return false;
        }
        if queue.frames.len() + usize::from(next.is_some()) >= queue.capacity {
            drop(queue);
            metrics::counter!("switchboard_slow_consumer_closes_total").increment(1);
            self.control.close(close::SLOW_CONSUMER);
            return false;
        }
        queue.frames.push_back(frame.clone());
        if let Some(next) = next {
            queue.frames.push_back(next.clone());
        }
        drop(queue);
        self.control.waker.wake();
        true
    }
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        self.control.queue.lock().sender_gone = true;
        self.control.waker.wake();
    }
}

/// What a session is asked to do next.
#[derive(Debug)]
pub enum Next {
    /// Write this frame.
    Frame(Outbound),
    /// Close with this code (asked by the hub, or 1000 once the hub let go).
    Close(u16),
}

/// The session's end of its connection: takes queued frames and close requests.
#[derive(Debug)]
pub struct Inbox {
    control: Arc<Control>,
}

impl Inbox {
    /// Resolves to the next thing to do: a close request comes before queued frames.
    pub fn next(&self) -> impl std::future::Future<Output = Next> + '_ {
        std::future::poll_fn(move |cx| {
            if let Some(next) = self.ready() {
                return Poll::Ready(next);
            }
            self.control.waker.register(cx.waker());
            // A push or close between the check and the registration woke nobody.
            match self.ready() {
                Some(next) => Poll::Ready(next),
                None => Poll::Pending,
            }
        })
    }

    fn ready(&self) -> Option<Next> {
        if let Some(code) = self.control.code() {
            return Some(Next::Close(code));
        }
        let mut queue = self.control.queue.lock();
        if let Some(frame) = queue.frames.pop_front() {
            return Some(Next::Frame(frame));
        }
        queue.sender_gone.then_some(Next::Close(close::NORMAL))
    }

    /// The next queued frame, if any, without waiting.
    pub fn try_next(&self) -> Option<Outbound> {
        self.control.queue.lock().frames.pop_front()
    }

    /// Gives back the queue's memory if it is empty (an idle connection
    /// should not keep the room a burst once needed).
    pub fn shrink(&self) {
        let mut queue = self.control.queue.lock();
        if queue.frames.is_empty() && queue.frames.capacity() > 0 {
            queue.frames = VecDeque::new();
        }
    }

    /// Bytes of queue memory held (for tests).
    pub fn queue_bytes(&self) -> usize {
        self.control.queue.lock().frames.capacity() * std::mem::size_of::<Outbound>()
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        // The frames left are freed after the lock is released.
        let frames = {
            let mut queue = self.control.queue.lock();
            queue.receiver_gone = true;
            std::mem::take(&mut queue.frames)
        };
        drop(frames);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64) -> Outbound {
        Frame::new(
            Place::Event(ConvKey::new("c1"), seq),
            Utf8Bytes::from(seq.to_string()),
        )
    }

    fn seq_of(next: Next) -> u64 {
        match next {
            Next::Frame(f) => match f.place {
                Place::Event(_, seq) => seq,
                _ => panic!("not an event"),
            },
            Next::Close(code) => panic!("closed with {code}"),
        }
    }

    #[tokio::test]
    async fn a_close_comes_first_and_the_first_code_wins_whenever_it_comes() {
        let (handle, inbox) = channel(1, 8);
        assert!(handle.push_with(&frame(1), None));
        handle.control.close(close::POLICY);
        handle.control.close(close::IDLE);
        assert!(matches!(inbox.next().await, Next::Close(close::POLICY)));

        let (handle, inbox) = channel(2, 8);
        let waiter = tokio::spawn(async move {
            let first = inbox.next().await;
            (first, inbox.next().await)
        });
        tokio::task::yield_now().await;
        assert!(handle.push_with(&frame(1), None));
        tokio::task::yield_now().await;
        handle.control.close(close::SLOW_CONSUMER);
        let (first, second) = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken by push and close")
            .expect("waiter task");
        assert_eq!(seq_of(first), 1);
        assert!(matches!(second, Next::Close(close::SLOW_CONSUMER)));
    }

    #[tokio::test]
    async fn the_queue_is_bounded_ordered_and_empty_until_used() {
        let (handle, inbox) = channel(1, 3);
        assert_eq!(inbox.queue_bytes(), 0, "no memory before the first frame");
        for seq in 1..=3 {
            assert!(handle.push_with(&frame(seq), None));
        }
        assert_eq!(seq_of(inbox.next().await), 1);
        assert_eq!(
            inbox.try_next().map(|f| f.place.clone()),
            Some(Place::Event(ConvKey::new("c1"), 2))
        );
        assert!(handle.push_with(&frame(4), None));
        assert!(
            handle.push_with(&frame(5), None),
            "room again after taking two"
        );
        assert!(
            !handle.push_with(&frame(6), None),
            "a fourth queued frame overflows"
        );
        assert_eq!(handle.control.code(), Some(close::SLOW_CONSUMER));
        assert!(matches!(
            inbox.next().await,
            Next::Close(close::SLOW_CONSUMER)
        ));
        for seq in 3..=5 {
            assert_eq!(
                inbox.try_next().map(|f| f.place.clone()),
                Some(Place::Event(ConvKey::new("c1"), seq))
            );
        }
        assert!(inbox.queue_bytes() > 0);
        inbox.shrink();
        assert_eq!(
            inbox.queue_bytes(),
            0,
            "an empty queue gives its memory back"
        );
    }

    #[tokio::test]
    async fn a_frame_and_its_follower_are_queued_together_or_overflow() {
        let (handle, inbox) = channel(1, 3);
        assert!(handle.push_with(&frame(1), Some(&frame(2))));
        assert_eq!(seq_of(inbox.next().await), 1);
        assert_eq!(seq_of(inbox.next().await), 2);
        assert!(handle.push_with(&frame(3), Some(&frame(4))));
        assert!(
            !handle.push_with(&frame(5), Some(&frame(6))),
            "two more would make four"
        );
        assert_eq!(handle.control.code(), Some(close::SLOW_CONSUMER));
    }

    #[tokio::test]
    async fn either_end_going_away_is_seen_by_the_other() {
        let (handle, inbox) = channel(1, 8);
        assert!(handle.push_with(&frame(1), None));
        drop(handle);
        assert_eq!(
            seq_of(inbox.next().await),
            1,
            "queued frames are still taken"
        );
        assert!(matches!(inbox.next().await, Next::Close(close::NORMAL)));

        let (handle, inbox) = channel(2, 8);
        assert!(handle.push_with(&frame(1), None));
        drop(inbox);
        assert!(
            !handle.push_with(&frame(2), None),
            "nobody takes frames any more"
        );
        assert_eq!(handle.control.code(), None, "which is not a slow consumer");
    }
}
