//! Switchboard: a real-time WebSocket gateway for conversation inboxes.
//!
//! Layout (one obvious place for each part):
//! - [`model`]: plain data of the directory, in the policy-case world format;
//! - [`policy`]: the access contract (`shared/POLICY.md`), pure;
//! - [`assign`]: round-robin eligibility and rotation, pure;
//! - [`cli`]: `policy-check` and `explain` over world files.

pub mod assign;
pub mod cli;
pub mod model;
pub mod policy;
