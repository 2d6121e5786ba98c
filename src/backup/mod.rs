//! Backups as a library: what a finished backup reports. The taking itself lives
//! in `physical` (the data-directory copy, pg_basebackup's tar) and `pipeline`
//! (pg_dump streams); the verb composes them under the backup lock.

pub mod report;
