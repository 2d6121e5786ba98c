//! The roles and tablespaces script of a logical backup (`pg_dumpall --globals-only`)
//! as it is replayed into a cluster: tablespaces moved (`--tablespace-map NAME=DIR`)
//! or left out (`--no-tablespaces`), and psql's failures (with `-b`, each error is
//! followed by its statement) read back one by one.

use std::fmt;

use anyhow::Result;

use crate::usage;

/// `CREATE TABLESPACE name …` → the name (unquoted), and where the name ends.
fn created_tablespace(line: &str) -> Option<String> {
    let rest = line.strip_prefix("CREATE TABLESPACE ")?;
    if let Some(quoted) = rest.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = quoted.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    name.push('"');
                    continue;
                }
                return Some(name);
            }
            name.push(c);
        }
        return None;
    }
    rest.split_whitespace().next().map(str::to_string)
}

/// A statement about a tablespace other than its creation (left out with it).
fn about_a_tablespace(line: &str) -> bool {
    line.starts_with("ALTER TABLESPACE ")
        || line.starts_with("COMMENT ON TABLESPACE ")
        || ((line.starts_with("GRANT ") || line.starts_with("REVOKE ")) && line.contains(" ON TABLESPACE "))
}

/// The script with each mapped tablespace's `LOCATION` replaced, or every tablespace
/// statement left out. A map naming a tablespace the script does not create is an
/// error (a typo would otherwise put it back where it was).
pub fn place_tablespaces(script: &str, map: &[(String, String)], leave_out: bool) -> Result<String> {
    let mut out = String::with_capacity(script.len());
    let mut seen = Vec::new();
    for line in script.split_inclusive('\n') {
        if let Some(name) = created_tablespace(line) {
            seen.push(name.clone());
            if leave_out {
                continue;
            }
            if let Some((_, dir)) = map.iter().find(|(n, _)| *n == name) {
                let at = line
                    .find(" LOCATION '")
                    .ok_or_else(|| anyhow::anyhow!("cannot find the LOCATION of tablespace {name:?} in the script"))?;
                let end = if line.ends_with('\n') { "';\n" } else { "';" };
                out.push_str(&line[..at]);
                out.push_str(&format!(
                    " LOCATION {}{}",
                    crate::postgres::quote_literal(dir),
                    &end[1..]
                ));
                continue;
            }
        } else if leave_out && about_a_tablespace(line) {
            continue;
        }
        out.push_str(line);
    }
    if let Some((name, _)) = map.iter().find(|(n, _)| !seen.contains(n)) {
        return Err(usage!(
            "--tablespace-map {name}=…: the backup creates no tablespace {name:?} (it has: {})",
            if seen.is_empty() {
                "none".to_string()
            } else {
                seen.join(", ")
            }
        ));
    }
    Ok(out)
}

/// A statement of the script that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub error: String,
    pub statement: String,
    /// It was a `CREATE TABLESPACE`, of this tablespace.
    pub tablespace: Option<String>,
    pub is_tablespace: bool,
}

impl Failure {
    /// What failed is already there (a role or tablespace of the same name).
    pub fn already_exists(&self) -> bool {
        self.error.contains("already exists")
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} — {}", self.statement, self.error)
    }
}

/// A statement as it may be shown: the value after PASSWORD (a role's hash) hidden,
/// and cut to 200 characters.
fn shown(statement: &str) -> String {
    let mut s = statement.to_string();
    if let Some(at) = s.find("PASSWORD '") {
        let from = at + "PASSWORD '".len();
        let to = s[from..].find('\'').map_or(s.len(), |e| from + e);
        s.replace_range(from..to, "…");
    }
    if s.chars().count() > 200 {
        s = s.chars().take(200).collect::<String>() + "…";
    }
    s
}

/// psql's `ERROR:` lines, each with the `STATEMENT:` line `-b` prints after it.
pub fn failures(stderr: &[String]) -> Vec<Failure> {
    let field = |line: &str, tag: &str| line.find(tag).map(|at| line[at + tag.len()..].trim().to_string());
    let mut out = Vec::new();
    let mut lines = stderr.iter().peekable();
    while let Some(line) = lines.next() {
        let Some(error) = field(line, "ERROR:") else { continue };
        // DETAIL, HINT and CONTEXT lines may come between the error and its statement.
        while lines
            .next_if(|l| !l.contains("STATEMENT:") && !l.contains("ERROR:"))
            .is_some()
        {}
        let statement = lines
            .next_if(|l| l.contains("STATEMENT:"))
            .and_then(|l| field(l, "STATEMENT:"))
            .unwrap_or_default();
        let tablespace = created_tablespace(&statement);
        out.push(Failure {
            error,
            is_tablespace: tablespace.is_some(),
            tablespace,
            statement: shown(&statement),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = "CREATE ROLE app;\nALTER ROLE app WITH LOGIN PASSWORD 'SCRAM-SHA-256$4096:abc';\nCREATE TABLESPACE fast OWNER postgres LOCATION '/srv/fast';\nCREATE TABLESPACE \"My TS\" OWNER app LOCATION '/srv/my ts';\nGRANT CREATE ON TABLESPACE fast TO app;\nCOMMENT ON TABLESPACE fast IS 'x';\n";

    #[test]
    fn tablespaces_are_moved_or_left_out() {
        let moved = place_tablespaces(
            SCRIPT,
            &[
                ("My TS".into(), "/new/it's".into()),
                ("fast".into(), "/new/fast".into()),
            ],
            false,
        )
        .unwrap();
        assert!(
            moved.contains("CREATE TABLESPACE fast OWNER postgres LOCATION '/new/fast';\n"),
            "{moved}"
        );
        assert!(
            moved.contains("CREATE TABLESPACE \"My TS\" OWNER app LOCATION '/new/it''s';\n"),
            "{moved}"
        );
        assert!(moved.contains("GRANT CREATE ON TABLESPACE fast TO app;"));
        let out = place_tablespaces(SCRIPT, &[], true).unwrap();
        assert_eq!(
            out,
            "CREATE ROLE app;\nALTER ROLE app WITH LOGIN PASSWORD 'SCRAM-SHA-256$4096:abc';\n"
        );
        let e = place_tablespaces(SCRIPT, &[("slow".into(), "/x".into())], false).unwrap_err();
        assert!(format!("{e:#}").contains("fast, My TS"), "{e:#}");
    }

    #[test]
    fn each_failure_is_named_with_its_statement_and_no_password() {
        let stderr: Vec<String> = [
            "psql:<stdin>:1: ERROR:  role \"app\" already exists",
            "psql:<stdin>:1: STATEMENT:  CREATE ROLE app;",
            "psql:<stdin>:2: ERROR:  nope",
            "psql:<stdin>:2: STATEMENT:  ALTER ROLE app WITH LOGIN PASSWORD 'SCRAM-SHA-256$4096:abc';",
            "psql:<stdin>:3: ERROR:  directory \"/srv/fast\" does not exist",
            "psql:<stdin>:3: HINT:  Create this directory for the tablespace before restarting the server.",
            "psql:<stdin>:3: STATEMENT:  CREATE TABLESPACE fast OWNER postgres LOCATION '/srv/fast';",
        ]
        .map(String::from)
        .to_vec();
        let f = failures(&stderr);
        assert_eq!(f.len(), 3);
        assert!(f[0].already_exists() && !f[0].is_tablespace);
        assert!(!f[1].to_string().contains("abc"), "{}", f[1]);
        assert_eq!(f[2].tablespace.as_deref(), Some("fast"));
        assert!(!f[2].already_exists());
    }
}
