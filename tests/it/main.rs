//! The integration tests, as one test binary: one link instead of one per
//! file, which is most of an incremental `cargo test` on a small machine.
//! Each file is a module; `support` is their shared harness. Run one file
//! with `cargo test --test it cluster::` (a name filter, not a binary).
//!
//! Sharing a process is safe here: no test sets environment variables, the
//! current directory or a global recorder or subscriber (the gateways run as
//! child processes; the in-process router of `input_props` installs the
//! metrics recorder idempotently), ports come from the OS (a gateway port is
//! never handed out twice in a process), and scratch folders and logs are
//! named per file, test, port or process.
//!
//! Kept as separate binaries:
//! - `tests/otel.rs`: needs the `otel` cargo feature, which rebuilds the
//!   crate; it compiles to nothing without it.

mod support;

mod admin_api;
mod api_contract;
mod api_docs;
mod check_config;
mod cli;
mod cluster;
mod console;
mod gateway_auth_errors;
mod gateway_delivery;
mod gateway_inbox;
mod gateway_limits;
mod gateway_live_access;
mod gateway_ops;
mod gateway_policy_worlds;
mod input_props;
mod interest;
mod isolation;
mod layers;
mod messaging;
mod observability;
mod outbound;
mod policy_cases;
mod policy_props;
mod store_contract;
