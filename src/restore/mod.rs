//! Restore as a library: the target a recovery is asked for (`target`), the backup it
//! starts from (`choose`), a logical restore (`logical`: a dump into pg_restore, row
//! counts checked; its roles and tablespaces script through `globals`) and a physical one (`physical`: plan, lay the files down, recovery
//! settings, start). `copy_back` brings lost tables back from a scratch copy into the
//! live database. The bundles and tars themselves are `crate::physical`; starting
//! and watching the server is `crate::server`.

pub mod choose;
pub mod copy_back;
pub mod globals;
pub mod logical;
pub mod physical;
pub mod report;
pub mod target;
