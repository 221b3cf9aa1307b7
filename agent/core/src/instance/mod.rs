//! The instance manager's pure core: signed, versioned bus messages ([`msg`]), trust ([`trust`]),
//! membership with the shared view the allocator decides on ([`membership`]), and the replay
//! floors that outlive a restart ([`floors`]), and when to answer a join request ([`answer`]).

pub mod answer;
pub mod floors;
pub mod membership;
pub mod msg;
pub mod trust;
