//! Correctness check of a run: for every posted message, the exact set of
//! connections that must receive it (the oracle), against what each connection
//! received. Counts leaks, misses, duplicates and reorders, and builds the
//! latency histograms of the valid deliveries at the same time.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::oracle::Oracle;

/// HTTP status of a post still in flight, or that failed below HTTP.
pub const POST_PENDING: u16 = 0;
pub const POST_TRANSPORT_ERROR: u16 = 1;

/// One message the harness posted (or tried to).
#[derive(Clone, Debug)]
pub struct Posted {
    pub conv: u32,
    /// Index of the measurement step (rate) it belongs to.
    pub step: u16,
    /// Gateway node it was posted to.
    pub node: u16,
    /// HTTP status (201/200 = stored), or [`POST_PENDING`] / [`POST_TRANSPORT_ERROR`].
    pub status: u16,
    pub seq: u64,
}

impl Posted {
    pub fn stored(&self) -> bool {
        self.status == 200 || self.status == 201
    }
}

/// What one client connection saw.
#[derive(Clone, Debug, Default)]
pub struct ConnRecord {
    pub index: usize,
    pub user: u32,
    pub node: u16,
    /// `hello` received (Switchboard) / `hello` event (peer).
    pub hello: bool,
    /// Why the connection failed to open, if it did.
    pub error: Option<String>,
    /// Connect start → hello, µs.
    pub hello_us: Option<u64>,
    /// (message index, latency µs) for every tagged `message` frame received.
    pub deliveries: Vec<(u32, u32)>,
    /// Frames whose `seq` equalled the previous one of the conversation.
    pub seq_dups: u64,
    /// Frames whose `seq` went backwards for the conversation.
    pub reorders: u64,
    /// Jumps of more than one in a conversation's `seq`.
    pub gaps: u64,
    /// Tagged messages whose `conversation` field is not the one posted to.
    pub wrong_conv: u64,
    /// Frames by type (`status`, `access_granted`, `error`, …), `message` excluded.
    pub other_frames: BTreeMap<String, u64>,
    /// Close code and reason sent by the server, if it closed the connection.
    pub server_close: Option<(u16, String)>,
    /// Messages with index in `expect_from..expect_to` must be received when
    /// `check_misses` (a connection that was up for the whole measurement).
    pub expect_from: u32,
    pub expect_to: u32,
    pub check_misses: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckSummary {
    pub connections_checked: usize,
    pub connections_failed: usize,
    pub posts_stored: u64,
    pub posts_failed: u64,
    pub expected_deliveries: u64,
    /// Of the expected deliveries, how many arrived.
    pub received_expected: u64,
    /// Every valid delivery, including those of connections not checked for
    /// misses (churned ones).
    pub valid_deliveries: u64,
    /// Received by a connection whose user may not read the conversation.
    pub leaks: u64,
    /// Must have been received (oracle) but was not, by the end plus grace.
    pub misses: u64,
    /// The same message received twice on one connection.
    pub duplicates: u64,
    /// `seq` not increasing per connection per conversation.
    pub reorders: u64,
    /// `seq` repeated on a connection (same event twice).
    pub seq_duplicates: u64,
    /// `seq` jumped (an event of the conversation was skipped).
    pub seq_gaps: u64,
    /// Delivered under another conversation id than posted.
    pub wrong_conversation: u64,
    /// Delivered although the post was answered with an error.
    pub phantom: u64,
    pub server_closes: BTreeMap<String, u64>,
    pub other_frames: BTreeMap<String, u64>,
    pub examples: Vec<String>,
}

impl CheckSummary {
    pub fn passed(&self) -> bool {
        self.leaks == 0
            && self.misses == 0
            && self.duplicates == 0
            && self.reorders == 0
            && self.seq_duplicates == 0
            && self.seq_gaps == 0
            && self.wrong_conversation == 0
            && self.phantom == 0
    }

    pub fn one_line(&self) -> String {
        format!(
            "{}: expected {} deliveries, received {} of them ({} valid in all); leaks {}, misses {}, duplicates {}, reorders {}, seq duplicates {}, seq gaps {}, wrong conversation {}, phantom {}; {} of {} connections failed to open",
            if self.passed() { "PASS" } else { "FAIL" },
            self.expected_deliveries,
            self.received_expected,
            self.valid_deliveries,
            self.leaks,
            self.misses,
            self.duplicates,
            self.reorders,
            self.seq_duplicates,
            self.seq_gaps,
            self.wrong_conversation,
            self.phantom,
            self.connections_failed,
            self.connections_checked,
        )
    }
}

/// Latency histograms of valid deliveries: per step, split by whether the
/// receiving connection is on the node the message was posted to.
pub struct Latencies {
    pub all: Vec<Histogram<u64>>,
    pub same_node: Vec<Histogram<u64>>,
    pub cross_node: Vec<Histogram<u64>>,
    /// Valid deliveries per step.
    pub deliveries: Vec<u64>,
}

pub fn new_hist() -> Histogram<u64> {
    // 1 µs .. 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

impl Latencies {
    fn new(steps: usize) -> Self {
        Latencies {
            all: (0..steps).map(|_| new_hist()).collect(),
            same_node: (0..steps).map(|_| new_hist()).collect(),
            cross_node: (0..steps).map(|_| new_hist()).collect(),
            deliveries: vec![0; steps],
        }
    }
}

const MAX_EXAMPLES: usize = 12;

/// Checks every connection against the oracle and builds the histograms.
/// `conn_records` are sorted in place (deliveries by message index).
pub fn check(
    oracle: &Oracle,
    posted: &[Posted],
    conns: &mut [ConnRecord],
    steps: usize,
) -> (CheckSummary, Latencies) {
    let mut s = CheckSummary::default();
    let mut lat = Latencies::new(steps.max(1));
    // Stored messages per conversation, by index (ascending).
    let mut by_conv: Vec<Vec<u32>> = vec![Vec::new(); oracle.conv_ids.len()];
    for (i, p) in posted.iter().enumerate() {
        if p.stored() {
            s.posts_stored += 1;
            by_conv[p.conv as usize].push(i as u32);
        } else {
            s.posts_failed += 1;
        }
    }
    let example = |s: &mut CheckSummary, text: String| {
        if s.examples.len() < MAX_EXAMPLES {
            s.examples.push(text);
        }
    };
    for c in conns.iter_mut() {
        s.connections_checked += 1;
        if let Some((code, reason)) = &c.server_close {
            *s.server_closes
                .entry(format!("{code} {reason}").trim().to_owned())
                .or_insert(0) += 1;
        }
        for (k, v) in &c.other_frames {
            *s.other_frames.entry(k.clone()).or_insert(0) += v;
        }
        s.reorders += c.reorders;
        s.seq_duplicates += c.seq_dups;
        s.seq_gaps += c.gaps;
        s.wrong_conversation += c.wrong_conv;
        if !c.hello {
            s.connections_failed += 1;
            continue;
        }
        let uname = &oracle.user_ids[c.user as usize];
        if c.reorders + c.seq_dups + c.gaps + c.wrong_conv > 0 {
            example(
                &mut s,
                format!(
                    "connection {} ({uname}): {} reorders, {} repeated seq, {} seq gaps, {} wrong conversation",
                    c.index, c.reorders, c.seq_dups, c.gaps, c.wrong_conv
                ),
            );
        }
        c.deliveries.sort_unstable_by_key(|d| d.0);
        let mut prev: Option<u32> = None;
        let mut valid_in_window = 0u64;
        for &(m, us) in &c.deliveries {
            if prev == Some(m) {
                s.duplicates += 1;
                example(
                    &mut s,
                    format!("connection {} ({uname}): message #{m} twice", c.index),
                );
                continue;
            }
            prev = Some(m);
            let Some(p) = posted.get(m as usize) else {
                s.phantom += 1;
                example(
                    &mut s,
                    format!("connection {} ({uname}): unknown message #{m}", c.index),
                );
                continue;
            };
            let conv = &oracle.conv_ids[p.conv as usize];
            if !oracle.can_read(c.user, p.conv) {
                s.leaks += 1;
                example(
                    &mut s,
                    format!("LEAK: connection {} user {uname} received message #{m} of {conv} which they may not read", c.index),
                );
                continue;
            }
            if !p.stored() {
                s.phantom += 1;
                example(
                    &mut s,
                    format!("connection {} ({uname}): received message #{m} of {conv} whose post failed with {}", c.index, p.status),
                );
                continue;
            }
            s.valid_deliveries += 1;
            if (c.expect_from..c.expect_to).contains(&m) {
                valid_in_window += 1;
            }
            let step = (p.step as usize).min(lat.all.len() - 1);
            let v = u64::from(us).max(1);
            lat.all[step].saturating_record(v);
            if p.node == c.node {
                lat.same_node[step].saturating_record(v);
            } else {
                lat.cross_node[step].saturating_record(v);
            }
            lat.deliveries[step] += 1;
        }
        if !c.check_misses {
            continue;
        }
        let mut expected = 0u64;
        for &conv in &oracle.readable[c.user as usize] {
            let list = &by_conv[conv as usize];
            let lo = list.partition_point(|&m| m < c.expect_from);
            let hi = list.partition_point(|&m| m < c.expect_to);
            expected += (hi - lo) as u64;
        }
        s.expected_deliveries += expected;
        s.received_expected += valid_in_window.min(expected);
        let missed = expected.saturating_sub(valid_in_window);
        if missed > 0 {
            s.misses += missed;
            if s.examples.len() < MAX_EXAMPLES {
                // Name the first missed message.
                'find: for &conv in &oracle.readable[c.user as usize] {
                    for &m in &by_conv[conv as usize] {
                        if (c.expect_from..c.expect_to).contains(&m)
                            && c.deliveries.binary_search_by_key(&m, |d| d.0).is_err()
                        {
                            let close = c
                                .server_close
                                .as_ref()
                                .map(|(code, r)| format!("; server closed it with {code} {r}"))
                                .unwrap_or_default();
                            example(
                                &mut s,
                                format!(
                                    "MISS: connection {} user {uname} missed {missed} message(s), e.g. #{m} of {}{close}",
                                    c.index, oracle.conv_ids[conv as usize]
                                ),
                            );
                            break 'find;
                        }
                    }
                }
            }
        }
    }
    (s, lat)
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard::domain::{Conversation, ConversationKind, User, World};

    /// Two users; v0 readable by both (unassigned, unrestricted), v1 a direct
    /// conversation of u0 only (with a third user u2).
    fn tiny() -> Oracle {
        let user =
            |id: &str| -> User { serde_json::from_value(serde_json::json!({"id": id})).unwrap() };
        let mut world: World = serde_json::from_value(serde_json::json!({
            "channels": [{"id": "ch"}], "contacts": [{"id": "k"}],
        }))
        .unwrap();
        world.users = vec![user("u0"), user("u1"), user("u2")];
        world.conversations.push(Conversation::new_customer(
            "v0".into(),
            "w1".into(),
            "ch".into(),
            "k".into(),
        ));
        let mut d = Conversation::new_customer("v1".into(), "w1".into(), "ch".into(), "k".into());
        d.kind = ConversationKind::Direct;
        d.channel = None;
        d.contact = None;
        d.participants = vec!["u0".into(), "u2".into()];
        world.conversations.push(d);
        world.validate().unwrap();
        Oracle::new(&world)
    }

    fn post(conv: u32, step: u16) -> Posted {
        Posted {
            conv,
            step,
            node: 0,
            status: 201,
            seq: 1,
        }
    }

    fn conn(index: usize, user: u32, deliveries: Vec<(u32, u32)>) -> ConnRecord {
        ConnRecord {
            index,
            user,
            hello: true,
            deliveries,
            expect_to: u32::MAX,
            check_misses: true,
            ..ConnRecord::default()
        }
    }

    #[test]
    fn clean_run_passes_and_counts_latency() {
        let o = tiny();
        let posted = vec![post(0, 0), post(1, 0), post(0, 1)];
        let mut conns = vec![
            conn(0, 0, vec![(0, 1000), (1, 2000), (2, 3000)]),
            conn(1, 1, vec![(2, 500), (0, 700)]),
        ];
        let (s, lat) = check(&o, &posted, &mut conns, 2);
        assert!(s.passed(), "{s:?}");
        assert_eq!(s.expected_deliveries, 5);
        assert_eq!(s.valid_deliveries, 5);
        assert_eq!(lat.deliveries, vec![3, 2]);
        assert_eq!(lat.all[1].max(), lat.all[1].highest_equivalent(3000));
    }

    #[test]
    fn leak_miss_duplicate_and_phantom_are_counted() {
        let o = tiny();
        let mut failed = post(0, 0);
        failed.status = 500;
        let posted = vec![post(0, 0), post(1, 0), failed];
        let mut conns = vec![
            // u1 gets the direct message of u0/u2: a leak; misses nothing else.
            conn(0, 1, vec![(0, 10), (1, 10)]),
            // u0 misses #1, gets #0 twice, and a failed post.
            conn(1, 0, vec![(0, 10), (0, 11), (2, 10)]),
        ];
        let (s, _) = check(&o, &posted, &mut conns, 1);
        assert!(!s.passed());
        assert_eq!(s.leaks, 1);
        assert_eq!(s.misses, 1);
        assert_eq!(s.duplicates, 1);
        assert_eq!(s.phantom, 1);
        assert!(
            s.examples.iter().any(|e| e.starts_with("LEAK")),
            "{:?}",
            s.examples
        );
        assert!(
            s.examples.iter().any(|e| e.starts_with("MISS")),
            "{:?}",
            s.examples
        );
        assert!(s.one_line().starts_with("FAIL"));
    }

    #[test]
    fn window_and_unchecked_connections() {
        let o = tiny();
        let posted = vec![post(0, 0), post(0, 0), post(0, 0)];
        let mut late = conn(0, 1, vec![(2, 5)]);
        late.expect_from = 2;
        let mut churned = conn(1, 1, vec![]);
        churned.check_misses = false;
        let mut failed = conn(2, 1, vec![]);
        failed.hello = false;
        let mut conns = vec![late, churned, failed];
        let (s, _) = check(&o, &posted, &mut conns, 1);
        assert!(s.passed(), "{s:?}");
        assert_eq!(s.expected_deliveries, 1);
        assert_eq!(s.connections_failed, 1);
    }

    #[test]
    fn reorders_from_connections_fail_the_run() {
        let o = tiny();
        let mut c = conn(0, 0, vec![]);
        c.reorders = 2;
        let (s, _) = check(&o, &[], &mut [c], 1);
        assert_eq!(s.reorders, 2);
        assert!(!s.passed());
    }
}
