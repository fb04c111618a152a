//! Switchboard: a real-time WebSocket gateway for conversation inboxes.
//!
//! Where each part lives:
//! - [`domain`]: plain data of the directory, in the policy-case world format,
//!   and the committed changes;
//! - [`policy`]: the access contract (`docs/access-policy.md`), pure functions;
//! - [`assign`]: round-robin eligibility and rotation, pure;
//! - [`store`]: durable state behind one trait (memory, Redis) and the ordered
//!   stream of committed changes;
//! - [`hub`]: fan-out — per-workspace audiences and live connections;
//! - [`outbound`]: delivery of agents' messages to channel adapters, from
//!   the store's outbox;
//! - [`ws`]: the agent WebSocket sessions;
//! - [`http`]: admin, adapter and operations endpoints;
//! - [`ops`]: the operations both APIs share (validate, check, commit), one
//!   file per subject, failing with a typed [`ops::OpError`];
//! - [`server`]: wiring and graceful shutdown; [`config`]: flags, env, TOML;
//!   [`http::api_docs`]: the OpenAPI document and frame JSON Schemas, from the types;
//!   [`credentials`]: adapter keys and their workspace scopes.

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
