//! Media at rest: where outputs are stored (a directory or S3) and the signed, expiring
//! links that serve them.

pub mod links;
pub mod storage;
