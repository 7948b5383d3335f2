//! Migrations that come with a deploy (`micropay deploy --migrations DIR`): checked against
//! what the service's database has applied, and applied before the swap.
//!
//! While a deploy swaps, the old version still serves (in-flight invocations, a canary's other
//! callers, another host a moment behind): so a migration may only add to the schema, never
//! take away what the running version uses. Refused:
//! - one that changes a migration the database has applied (its checksum differs);
//! - one older than the newest applied (applied out of order, it would be skipped elsewhere);
//! - one that is not forward-only: it drops, renames, truncates or deletes, changes a column's
//!   type, makes a column `NOT NULL` (inserts by the running version would fail), replaces a
//!   function, view or rule, or runs SQL this check cannot read (`DO`, `EXECUTE`).
//!
//! This is a rail against mistakes, not a wall: the component's own role may run the same SQL
//! in its own schema whenever it is invoked. Deployed migrations run as that role, with a
//! statement and a lock timeout.

use std::borrow::Cow;
use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha384};

/// One migration of a deploy: as a file `NNNN_description.sql` of a migrations directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMigration {
    pub version: i64,
    pub description: String,
    pub sql: String,
}

impl NewMigration {
    /// The checksum sqlx keeps for it (SHA-384 of its text).
    pub fn checksum(&self) -> Vec<u8> {
        Sha384::digest(self.sql.as_bytes()).to_vec()
    }

    /// As sqlx's migrator runs it.
    pub fn to_sqlx(&self) -> sqlx::migrate::Migration {
        sqlx::migrate::Migration::new(
            self.version,
            Cow::Owned(self.description.clone()),
            sqlx::migrate::MigrationType::Simple,
            Cow::Owned(self.sql.clone()),
            false,
        )
    }
}

/// Reads the `NNNN_description.sql` files of `dir`, in order of version.
pub fn read_dir(dir: &Path) -> anyhow::Result<Vec<NewMigration>> {
    let mut migrations = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|name| name.to_str()) else { continue };
        let Some(stem) = name.strip_suffix(".sql") else { continue };
        let (version, description) = stem.split_once('_').unwrap_or((stem, ""));
        let version = version.parse().with_context(|| format!("{name}: not NNNN_description.sql"))?;
        let sql = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        migrations.push(NewMigration { version, description: description.replace('_', " "), sql });
    }
    migrations.sort_by_key(|migration| migration.version);
    Ok(migrations)
}

/// The migrations a database has applied: version and checksum.
pub type Applied = Vec<(i64, Vec<u8>)>;

/// Why the migrations of a deploy are refused: its code and what it says.
pub type Refusal = (&'static str, String);

/// Checks `migrations` against `applied` (version and checksum, as the database keeps them).
pub fn check(migrations: &[NewMigration], applied: &[(i64, Vec<u8>)]) -> Result<(), Refusal> {
    let newest = applied.iter().map(|(version, _)| *version).max().unwrap_or(0);
    for migration in migrations {
        match applied.iter().find(|(version, _)| *version == migration.version) {
            Some((_, checksum)) if *checksum == migration.checksum() => {}
            Some(_) => {
                return Err((
                    "migration_changed",
                    format!("migration {} was applied with other text; add a new migration instead", migration.version),
                ));
            }
            None if migration.version < newest => {
                return Err((
                    "migration_out_of_order",
                    format!("migration {} is older than the newest applied, {newest}", migration.version),
                ));
            }
            None => forward_only(&migration.sql).map_err(|reason| {
                ("migration_not_forward_only", format!("migration {}: {reason}", migration.version))
            })?,
        }
    }
    Ok(())
}

/// Refuses SQL that takes away from the schema, naming what it does.
pub fn forward_only(sql: &str) -> Result<(), String> {
    let words = words(sql);
    // `*` stands for any one word.
    let has = |sequence: &[&str]| {
        words.windows(sequence.len()).any(|window| window.iter().zip(sequence).all(|(w, s)| *s == "*" || w == s))
    };
    let refusals: [(&[&str], &str); 15] = [
        (&["DROP"], "it drops something the running version may use"),
        (&["RENAME"], "it renames something the running version may use"),
        (&["TRUNCATE"], "it empties a table"),
        (&["ALTER", "COLUMN", "*", "TYPE"], "it changes a column's type"),
        (&["ALTER", "COLUMN", "*", "SET", "DATA", "TYPE"], "it changes a column's type"),
        (&["ALTER", "*", "TYPE"], "it changes a column's type"),
        (&["ALTER", "*", "SET", "DATA", "TYPE"], "it changes a column's type"),
        (&["SET", "NOT", "NULL"], "it makes a column NOT NULL: the running version's inserts may fail"),
        (&["SET", "SCHEMA"], "it moves something to another schema"),
        (&["DELETE"], "it deletes rows the running version may use"),
        (&["OR", "REPLACE"], "it replaces something the running version may use"),
        (&["CREATE", "RULE"], "a rule changes what the running version's statements do"),
        (&[";", "DO"], "a DO block runs SQL this check cannot read"),
        (&["EXECUTE"], "EXECUTE runs SQL this check cannot read"),
        (&["REVOKE"], "it takes away privileges the running version may need"),
    ];
    match refusals.iter().find(|(sequence, _)| has(sequence)) {
        Some((_, reason)) => Err(reason.to_string()),
        None => Ok(()),
    }
}

/// The words of `sql` in upper case, without comments, string literals or quoted names; each
/// statement begins with a `;`.
fn words(sql: &str) -> Vec<String> {
    let mut words = vec![";".to_string()];
    let mut current = String::new();
    let mut chars = sql.chars().peekable();
    let flush = |current: &mut String, words: &mut Vec<String>| {
        if !current.is_empty() {
            words.push(std::mem::take(current).to_uppercase());
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '-' if chars.peek() == Some(&'-') => {
                flush(&mut current, &mut words);
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                flush(&mut current, &mut words);
                let mut previous = ' ';
                for c in chars.by_ref() {
                    if previous == '*' && c == '/' {
                        break;
                    }
                    previous = c;
                }
            }
            '\'' | '"' => {
                // An E'...' string takes backslash escapes; the E was read as a word.
                let escapes = c == '\'' && current.eq_ignore_ascii_case("e");
                if escapes {
                    current.clear();
                }
                flush(&mut current, &mut words);
                while let Some(next) = chars.next() {
                    if escapes && next == '\\' {
                        chars.next();
                    } else if next == c {
                        break;
                    }
                }
            }
            '$' if current.is_empty() => {
                // A dollar-quoted string: $tag$ ... $tag$ (its body is text, not statements).
                let mut tag = String::from("$");
                while let Some(&next) = chars.peek() {
                    chars.next();
                    tag.push(next);
                    if next == '$' {
                        break;
                    }
                    if !(next.is_alphanumeric() || next == '_') {
                        tag.clear();
                        break;
                    }
                }
                if tag.len() >= 2 && tag.ends_with('$') {
                    let mut body = String::new();
                    for next in chars.by_ref() {
                        body.push(next);
                        if body.ends_with(&tag) {
                            break;
                        }
                    }
                }
            }
            c if c.is_alphanumeric() || c == '_' => current.push(c),
            ';' => {
                flush(&mut current, &mut words);
                words.push(";".into());
            }
            _ => flush(&mut current, &mut words),
        }
    }
    flush(&mut current, &mut words);
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migration(version: i64, sql: &str) -> NewMigration {
        NewMigration { version, description: "test".into(), sql: sql.into() }
    }

    #[test]
    fn only_additions_are_forward_only() {
        for sql in [
            "CREATE TABLE notes (id BIGINT PRIMARY KEY, body TEXT)",
            "ALTER TABLE notes ADD COLUMN author TEXT",
            "CREATE INDEX notes_author ON notes (author)",
            "CREATE TYPE mood AS ENUM ('ok')",
            "INSERT INTO notes VALUES (1, 'DROP TABLE notes')",
            "-- DROP TABLE notes\nCREATE TABLE drop_log (id BIGINT)",
            "ALTER TABLE notes ADD COLUMN type TEXT",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $body$ SELECT 1; -- DROP $body$",
            "UPDATE notes SET author = 'x' WHERE author IS NULL",
            "INSERT INTO notes VALUES (1, 'a') ON CONFLICT DO NOTHING",
        ] {
            assert_eq!(forward_only(sql), Ok(()), "{sql}");
        }
        for sql in [
            "DROP TABLE notes",
            "ALTER TABLE notes DROP COLUMN body",
            "ALTER TABLE notes RENAME COLUMN body TO text",
            "TRUNCATE notes",
            "ALTER TABLE notes ALTER COLUMN body TYPE VARCHAR(10)",
            "alter table notes alter column body set not null",
            "ALTER TABLE notes SET SCHEMA public",
            "DO $$ BEGIN EXECUTE 'DROP TABLE notes'; END $$",
            "SELECT E'\\'' ; DROP TABLE notes",
            "CREATE OR REPLACE VIEW v AS SELECT 1",
            "DELETE FROM notes",
            "CREATE TABLE a (id INT); do $$ BEGIN END $$",
        ] {
            assert!(forward_only(sql).is_err(), "{sql}");
        }
    }

    #[test]
    fn applied_migrations_may_not_change_and_new_ones_come_after() {
        let first = migration(1, "CREATE TABLE a (id INT)");
        let applied = vec![(1, first.checksum()), (3, migration(3, "CREATE TABLE c (id INT)").checksum())];
        assert!(check(&[first.clone(), migration(4, "CREATE TABLE d (id INT)")], &applied).is_ok());
        assert_eq!(check(&[migration(1, "CREATE TABLE a (id BIGINT)")], &applied).unwrap_err().0, "migration_changed");
        assert_eq!(
            check(&[migration(2, "CREATE TABLE b (id INT)")], &applied).unwrap_err().0,
            "migration_out_of_order"
        );
        assert_eq!(check(&[migration(4, "DROP TABLE a")], &applied).unwrap_err().0, "migration_not_forward_only");
    }
}
