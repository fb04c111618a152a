//! The domain: plain data of a workspace's directory (in the policy-case
//! world format) and the events that change it. No I/O, no clocks, no locks;
//! every other layer builds on these types.

pub mod events;
pub mod model;
pub mod outbound;

pub use events::*;
pub use model::*;
pub use outbound::{Outbound, OutboundEvent, OutboxItem};
