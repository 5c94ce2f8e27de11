//! Prefixed, time-ordered identifiers (`job_…`, `evt_…`, `key_…`, `acct_…`, `ep_…`, `dlv_…`,
//! `file_…`).
//!
//! A UUIDv7 underneath keeps ids sortable by creation time, which is what lets job lists
//! page newest-first by id alone.

use uuid::Uuid;

/// Kinds of ids, each with the prefix users see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Job,
    Event,
    Key,
    Account,
    Endpoint,
    Delivery,
    /// A file a client uploaded (a video's `input_reference`).
    File,
    /// One entry of the money ledger.
    Ledger,
    /// Money a process holds for a key's chat requests (`billing::lease`).
    Lease,
}

impl IdKind {
    pub const fn prefix(self) -> &'static str {
        match self {
            IdKind::Job => "job_",
            IdKind::Event => "evt_",
            IdKind::Key => "key_",
            IdKind::Account => "acct_",
            IdKind::Endpoint => "ep_",
            IdKind::Delivery => "dlv_",
            IdKind::File => "file_",
            IdKind::Ledger => "led_",
            IdKind::Lease => "lease_",
        }
    }
}

/// A new id of the given kind: prefix + 32 lowercase hex digits of a UUIDv7.
pub fn new_id(kind: IdKind) -> String {
    format!("{}{}", kind.prefix(), Uuid::now_v7().simple())
}

/// Whether `id` has the shape of an id of `kind`; cheap filtering of junk before SQL.
pub fn looks_like(kind: IdKind, id: &str) -> bool {
    id.strip_prefix(kind.prefix())
        .is_some_and(|rest| rest.len() == 32 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Milliseconds since the Unix epoch; every stored time uses this unit.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_sortable_and_recognised() {
        let a = new_id(IdKind::Job);
        let b = new_id(IdKind::Job);
        assert!(a.starts_with("job_"));
        assert!(a < b, "UUIDv7 ids must sort by creation time");
        assert!(looks_like(IdKind::Job, &a));
        assert!(!looks_like(IdKind::Event, &a));
        assert!(!looks_like(IdKind::Job, "job_../../etc"));
    }
}
