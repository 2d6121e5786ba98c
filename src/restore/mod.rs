//! Restore as a library: the target a recovery is asked for (`target`) and the backup
//! it starts from (`choose`). The copying itself is `physical` (bundles, tar) and
//! `pipeline` (logical dumps); starting and watching the server is `server`.

pub mod choose;
pub mod logical;
pub mod report;
pub mod target;
