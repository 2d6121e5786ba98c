//! Continuous WAL archiving, both directions. `push` stores a file PostgreSQL hands to
//! `archive_command` (`claim`: first claiming its name, on a store that ignores
//! `If-None-Match`); `spool` holds the notes and the detached pusher that stores a
//! burst in parallel ahead of the asks; `fetch` answers `restore_command`;
//! `prefetch` fetches ahead of replay. The archive as a whole (timelines, the chain
//! a recovery needs) is `repo::archive`.

pub mod claim;
pub mod fetch;
pub mod prefetch;
pub mod push;
pub mod replicate;
pub mod spool;
