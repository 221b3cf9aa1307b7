//! The instance manager's pure core: signed, versioned bus messages ([`msg`]), trust ([`trust`])
//! and membership with the shared view the allocator decides on ([`membership`]).

pub mod membership;
pub mod msg;
pub mod trust;
