//! Media at rest: where outputs are stored (a directory or S3), the signed, expiring
//! links that serve them, and the thumbnails of videos.

pub mod links;
pub mod storage;
pub mod thumbnail;
