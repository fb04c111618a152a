//! The hub's handle on one live WebSocket session.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::task::Poll;

use futures_util::task::AtomicWaker;
use tokio::sync::mpsc;
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

/// A frame's relation to a conversation's sequence. The hub queues each
/// connection's frames of a conversation in increasing `seq`; only a
/// `resume` replay can overlap them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// Outside any conversation's sequence.
    Outside,
    /// An event of the conversation, holding its `seq`: written at most once
    /// per connection, never after a later one.
    Event(Arc<str>, u64),
    /// Access gained, as of the conversation's latest `seq`. It repeats no
    /// event, so it is always written.
    Granted(Arc<str>, u64),
    /// Access lost: nothing more of the conversation follows until it is
    /// granted again, so a session can forget what it sent of it.
    Revoked(Arc<str>),
}

pub type Outbound = Arc<Frame>;

/// Asks a session to close; shared between the hub and the session task.
///
/// The session polls it on every wake-up, so it is one atomic and one
/// waker slot rather than a cancellation token (whose poll takes a lock).
#[derive(Debug, Default)]
pub struct Control {
    code: AtomicU16,
    waker: AtomicWaker,
}

impl Control {
    pub fn close(&self, code: u16) {
        // The first reason wins.
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
    /// Resolves to the close code once `close` was called.
    pub fn closed(&self) -> impl std::future::Future<Output = u16> + '_ {
        std::future::poll_fn(move |cx| {
            if let Some(code) = self.code() {
                return Poll::Ready(code);
            }
            self.waker.register(cx.waker());
            // A close between the check and the registration woke nobody.
            match self.code() {
                Some(code) => Poll::Ready(code),
                None => Poll::Pending,
            }
        })
    }
}

#[derive(Clone, Debug)]
pub struct ConnHandle {
    pub id: u64,
    pub tx: mpsc::Sender<Outbound>,
    pub control: Arc<Control>,
}

impl ConnHandle {
    /// Queues a frame without waiting. A full queue closes the connection with
    /// 4008 rather than dropping the event or stalling fan-out; the client
    /// recovers with `resume`. Returns false when the connection is gone.
    pub fn push(&self, frame: Outbound) -> bool {
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("switchboard_slow_consumer_closes_total").increment(1);
                self.control.close(close::SLOW_CONSUMER);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn closed_resolves_with_the_first_code_whenever_close_comes() {
        let before = Control::default();
        before.close(close::POLICY);
        before.close(close::IDLE);
        assert_eq!(before.closed().await, close::POLICY);

        let control = Arc::new(Control::default());
        let waiter = tokio::spawn({
            let control = control.clone();
            async move { control.closed().await }
        });
        tokio::task::yield_now().await;
        control.close(close::SLOW_CONSUMER);
        let code = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken by close")
            .expect("waiter task");
        assert_eq!(code, close::SLOW_CONSUMER);
    }
}
