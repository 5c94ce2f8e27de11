//! Webhooks: Standard Webhooks signing, and the guard that keeps delivery off private
//! networks. Delivery itself (endpoints, schedule, delivery log) builds on these.

pub mod signature;
