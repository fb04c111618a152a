//! The domain: plain data of a workspace's directory (in the policy-case
//! world format) and the events that change it. No I/O, no clocks, no locks;
//! every other layer builds on these types.

pub mod events;
pub mod model;

pub use events::*;
pub use model::*;
