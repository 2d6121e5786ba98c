//! `PGDR_<SECTION>_<KEY>` environment variables: each overrides one field of the
//! configuration file; one that names no field is an error naming the variable.

use anyhow::Result;

use super::Config;
use crate::usage;

/// Environment variables that carry something other than a config field.
/// `PGDR_REPOSITORY` names the repository to use (the primary or a copy), like
/// `--repository`.
const RESERVED_ENV: &[&str] = &[
    "PGDR_CONFIG",
    "PGDR_KEY",
    "PGDR_LOG",
    "PGDR_LOG_FORMAT",
    "PGDR_REPOSITORY",
];
const SECTIONS: &[&str] = &[
    "postgres",
    "repository",
    "retention",
    "wal",
    "verify",
    "notify",
    "schedule",
    "switch",
];

/// `PGDR_REPOSITORY_URL=...` sets `repository.url`; `PGDR_CLUSTER` sets `cluster`.
pub fn apply_overrides(table: &mut toml::Table, vars: impl Iterator<Item = (String, String)>) -> Result<()> {
    for (name, raw) in vars {
        let Some(rest) = name.strip_prefix("PGDR_") else {
            continue;
        };
        if RESERVED_ENV.contains(&name.as_str()) || rest.starts_with("TEST_") {
            continue;
        }
        let rest = rest.to_ascii_lowercase();
        let (section, key) = match SECTIONS.iter().find(|s| rest.starts_with(&format!("{s}_"))) {
            Some(section) => (Some(*section), rest[section.len() + 1..].to_string()),
            None => (None, rest),
        };
        let value = env_value(&raw);
        let target = match section {
            Some(section) => {
                let entry = table
                    .entry(section.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                match entry {
                    toml::Value::Table(t) => t,
                    _ => {
                        return Err(usage!("{name}: `{section}` is not a table in the configuration file"));
                    }
                }
            }
            None => &mut *table,
        };
        target.insert(key, value);
    }
    Ok(())
}

/// The `PGDR_*` variable that names no setting (a typo such as
/// `PGDR_REPOSITRY_URL`), as an error naming the variable, not the file: each one is
/// tried alone on the file's table.
pub(super) fn misspelt(
    file_table: &toml::Table,
    vars: impl Iterator<Item = (String, String)>,
) -> Option<anyhow::Error> {
    let unknown_field =
        |table: toml::Table| match serde_path_to_error::deserialize::<_, Config>(toml::Value::Table(table)) {
            Err(e) => e.inner().to_string().contains("unknown field"),
            Ok(_) => false,
        };
    // The file's own mistake is the file's to name.
    if unknown_field(file_table.clone()) {
        return None;
    }
    let overrides = vars.filter(|(n, _)| {
        n.strip_prefix("PGDR_")
            .is_some_and(|rest| !RESERVED_ENV.contains(&n.as_str()) && !rest.starts_with("TEST_"))
    });
    for (name, value) in overrides {
        let mut table = file_table.clone();
        if apply_overrides(&mut table, std::iter::once((name.clone(), value))).is_err() {
            continue;
        }
        if unknown_field(table) {
            return Some(usage!(
                "the environment variable {name} names no pgdr setting — check its spelling, or unset it (settings are PGDR_<SECTION>_<KEY>, e.g. PGDR_REPOSITORY_URL, PGDR_POSTGRES_URL)"
            ));
        }
    }
    None
}

/// Environment values are strings; numbers and booleans are recognised as such.
fn env_value(raw: &str) -> toml::Value {
    if let Ok(b) = raw.parse::<bool>() {
        return toml::Value::Boolean(b);
    }
    if let Ok(i) = raw.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    toml::Value::String(raw.to_string())
}
