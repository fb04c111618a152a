//! Switchboard: a real-time WebSocket gateway for conversation inboxes.
//!
//! Where each part lives:
//! - [`model`]: plain data of the directory, in the policy-case world format;
//! - [`policy`]: the access contract (`docs/access-policy.md`), pure functions;
//! - [`assign`]: round-robin eligibility and rotation, pure;
//! - [`store`]: durable state behind one trait (memory, Redis) and the ordered
//!   stream of committed changes;
//! - [`hub`]: fan-out — per-workspace audiences and live connections;
//! - [`ws`]: the agent WebSocket sessions;
//! - [`http`]: admin, adapter and operations endpoints;
//! - [`gateway`]: the operations both APIs share (validate, check, commit);
//! - [`inbox`]: the agent's inbox operations (marks, edits, views, bulk);
//! - [`server`]: wiring and graceful shutdown; [`config`]: flags, env, TOML;
//!   [`http::api_docs`]: the OpenAPI document and frame JSON Schemas, from the types;
//!   [`credentials`]: adapter keys and their workspace scopes;
//! - [`listing`]: the admin API's lists and export of one workspace.

pub mod assign;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod domain;
pub mod error;
pub mod gateway;
pub mod http;
pub mod hub;
pub mod inbox;
pub mod listing;
pub mod metrics;
#[cfg(feature = "otel")]
pub mod otel;
pub mod policy;
pub mod server;
pub mod store;
pub mod ws;
