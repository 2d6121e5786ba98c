//! pgdr — PostgreSQL backup and disaster recovery.
//!
//! Data flows one way: source → pipeline → storage on backup, storage → pipeline → sink
//! on restore. `storage` moves opaque bytes, `pipeline` compresses and encrypts them,
//! `repo` knows where things live and what a backup is, `postgres` drives the server and
//! its tools, and `commands` composes those parts, one file per verb.

pub mod archive;
pub mod backup;
pub mod check;
pub mod cli;
pub mod commands;
pub mod config;
pub mod copy;
pub mod disk;
pub mod drill;
pub mod exit;
pub mod failover;
pub mod notify;
pub mod os_error;
pub mod physical;
pub mod pipeline;
pub mod postgres;
pub mod preflight;
pub mod process;
pub mod progress;
pub mod rekey;
pub mod repo;
pub mod report;
pub mod restore;
pub mod retention;
pub mod runbook;
pub mod schedule;
pub mod server;
pub mod steps;
pub mod storage;
pub mod switch;
pub mod usage;
pub mod verify;
pub mod walsearch;
