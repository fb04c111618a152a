//! Switchboard: a real-time WebSocket gateway for conversation inboxes.
//!
//! The crate is layered; a module uses only modules of its own rank or below,
//! and top-level modules form no cycle (`tests/it/layers.rs` checks both from
//! the source, in CI):
//!
//! | rank | module | job |
//! | --- | --- | --- |
//! | 0 | [`domain`] | plain data: the directory (world format), conversations, messages, and the events that change them; what each conversation kind allows |
//! | 1 | [`policy`], [`assign`] | pure rules: who may see and do what, which view shows what (`policy::views`); round-robin eligibility and rotation. No I/O, clocks or locks |
//! | 2 | [`clock`], [`metrics`], [`auth`], [`credentials`], [`config`], `otel` (feature) | shell utilities: wall clock, Prometheus handles, agent tokens, adapter keys, settings, trace export |
//! | 3 | [`store`] | durable state behind one trait (`memory`, `redis`); numbers changes per conversation and hands them, in commit order, to any number of consumers |
//! | 4 | [`hub`] | fan-out, the store's consumer: per-workspace directory, audience index, live connections; event frames serialized once |
//! | 4 | [`outbound`] | delivery to channel adapters, the store's other consumer: signed POSTs from the outbox, in order per conversation, with retries and dead letters |
//! | 5 | [`ops`] | the operations both APIs share (validate → check policy → commit), one file per subject, failing with a typed [`ops::OpError`] |
//! | 6 | [`ws`] | agent WebSocket sessions: the connection loop, one handler per command, reply frames |
//! | 7 | [`http`] | admin, adapter and operations endpoints, the `/v1/ws` handshake, the OpenAPI document; the only place an `OpError` becomes a status |
//! | 8 | [`server`], [`cli`] | wiring, accept loop and graceful shutdown; command-line tools |

pub mod assign;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod domain;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod ops;
#[cfg(feature = "otel")]
pub mod otel;
pub mod outbound;
pub mod policy;
pub mod server;
pub mod store;
pub mod ws;
