//! The database: the one source of truth for jobs, events, webhook deliveries, keys,
//! accounts and their money, idempotency and chat usage.
//!
//! One set of SQL text serves both SQLite (embedded) and Postgres (production) through
//! sqlx's `Any` driver: the statements stick to the common dialect (`$N` parameters,
//! `RETURNING`, `ON CONFLICT`), times are integer milliseconds and JSON is text. Each
//! table has its own query module; nothing outside `db` writes SQL.
//!
//! Every statement is static text (a column list shared by several statements is a
//! `macro_rules!` spliced in with `concat!`), and every row is read by a
//! `#[derive(sqlx::FromRow)]` struct. A query is one function over any executor (the
//! pool, a connection, or the caller's transaction: `&mut *tx`), so a write can join the
//! transaction of the state change it belongs to; a function that runs several
//! statements takes a connection (`&mut AnyConnection`); a unit of work that needs a
//! transaction of its own (a page measured then read, a key rotation, a batch) is a
//! method of [`Db`]. The `Any` driver decodes only integers, floats,
//! text and bytes, so a column holding JSON or an enum's name is read as text into a raw
//! row and converted by its `TryFrom`.

pub mod accounts;
pub mod chat_usage;
pub mod events;
pub mod idempotency;
pub mod job_attempts;
pub mod jobs;
pub mod keys;
pub mod money;
pub mod settings;
pub mod webhook_deliveries;
pub mod webhook_endpoints;
pub mod webhook_secrets;

use std::time::Duration;

use serde::de::DeserializeOwned;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

use crate::ErrorCode;
use crate::jobs::job::JobError;

/// Which engine sits behind the pool; only connection setup and migrations differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    dialect: Dialect,
}

pub type Tx = sqlx::Transaction<'static, sqlx::Any>;

/// How many Postgres connections a process may hold (`max`), and how many it opens at
/// start and keeps open (`min`, at most `max`). Kept-open connections matter under load:
/// one opened on demand costs a backend start and a TLS handshake, and a burst of
/// requests right after a start (or after the pool went idle) waited 150–270 ms for
/// them (docs/PERFORMANCE.md).
#[derive(Debug, Clone, Copy)]
pub struct PoolSize {
    pub max: u32,
    pub min: u32,
}

impl PoolSize {
    /// A small pool for a one-off command: nothing kept open.
    pub const fn few(max: u32) -> PoolSize {
        PoolSize { max, min: 0 }
    }
}

impl Db {
    /// Connects to `url` (`sqlite://…` or `postgres://…`), creating the SQLite file if needed.
    /// `size` sizes the Postgres pool; SQLite, with its single writer, uses a few
    /// connections whatever it says.
    pub async fn connect(url: &str, size: PoolSize) -> Result<Db, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Dialect::Postgres
        } else {
            return Err(sqlx::Error::Configuration(
                format!("unsupported database URL scheme in {url:?}: use sqlite:// or postgres://")
                    .into(),
            ));
        };
        let url = match dialect {
            Dialect::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_owned(),
        };
        let options: AnyConnectOptions = url.parse()?;
        let pool_options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(10));
        let pool = match dialect {
            Dialect::Sqlite => {
                pool_options
                    // SQLite has one writer; a few connections let reads overlap a write.
                    .max_connections(4)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute(
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                                 PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;",
                            )
                            .await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await?
            }
            Dialect::Postgres => {
                pool_options
                    .max_connections(size.max)
                    .min_connections(size.min.min(size.max))
                    .connect_with(options)
                    .await?
            }
        };
        Ok(Db { pool, dialect })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Applies the migrations under `migrations/<dialect>/`.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        match self.dialect {
            Dialect::Sqlite => sqlx::migrate!("../migrations/sqlite").run(&self.pool).await,
            Dialect::Postgres => {
                sqlx::migrate!("../migrations/postgres")
                    .run(&self.pool)
                    .await
            }
        }
    }

    /// A write transaction. On SQLite it takes the write lock up front (`BEGIN IMMEDIATE`)
    /// so that two read-then-write transactions cannot deadlock into `SQLITE_BUSY`.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        match self.dialect {
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Dialect::Postgres => self.pool.begin().await,
        }
    }

    /// Cheap round trip for readiness checks.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }
}

/// An error kept in two columns, `error_code` and `error_message` (jobs and attempts):
/// read with `#[sqlx(flatten, try_from = "ErrorColumns")]`.
#[derive(Debug, sqlx::FromRow)]
pub struct ErrorColumns {
    error_code: Option<String>,
    error_message: Option<String>,
}

impl TryFrom<ErrorColumns> for Option<JobError> {
    type Error = sqlx::Error;

    fn try_from(c: ErrorColumns) -> Result<Self, sqlx::Error> {
        let Some(code) = c.error_code else {
            return Ok(None);
        };
        let code = ErrorCode::parse(&code).ok_or_else(|| {
            sqlx::Error::Decode(format!("bad error_code in row: {code:?}").into())
        })?;
        Ok(Some(JobError {
            code,
            message: c.error_message.unwrap_or_default(),
        }))
    }
}

/// The value of a JSON text column, or a decode error naming the table and column.
pub(crate) fn json_column<T: DeserializeOwned>(
    table: &str,
    column: &str,
    text: &str,
) -> Result<T, sqlx::Error> {
    serde_json::from_str(text).map_err(|e| {
        sqlx::Error::Decode(format!("bad {column} in {table} row ({e}): {text:?}").into())
    })
}

/// Most bytes of stored text one page of a list reads (`GET /v1/jobs`, a batch of a job's
/// events). With today's limits a job holds at most ~200 KB, so a full page of 100 fits
/// unless its jobs are near the limits; rows written before the limits may be far larger.
pub const LIST_PAGE_BYTES: i64 = 4 << 20;

/// The keys of `rows` (in list order, with their sizes in bytes; one more than `limit` if
/// more follow) that make a page of at most `limit` rows and `budget` bytes, and whether
/// rows remain after it. The first row is always taken, so a client gets past any row.
pub(crate) fn fit_page<K: Clone>(rows: &[(K, i64)], limit: usize, budget: i64) -> (Vec<K>, bool) {
    let mut keys = Vec::new();
    let mut total = 0i64;
    for (key, bytes) in rows.iter().take(limit) {
        total = total.saturating_add(*bytes);
        if !keys.is_empty() && total > budget {
            return (keys, true);
        }
        keys.push(key.clone());
    }
    (keys, rows.len() > limit)
}

#[cfg(test)]
mod tests {
    use super::fit_page;
    use std::collections::BTreeMap;
    use std::path::Path;

    /// A migration's statements with the two dialects' type names made one: comments
    /// dropped, whitespace and case folded, `INTEGER` read as `BIGINT` and SQLite's
    /// `INTEGER PRIMARY KEY AUTOINCREMENT` as Postgres's `BIGSERIAL PRIMARY KEY`.
    fn normalised(sql: &str) -> Vec<String> {
        let text: String = sql
            .lines()
            .map(|line| line.split("--").next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join(" ");
        text.split(';')
            .map(|statement| {
                let spaced = statement
                    .replace('(', " ( ")
                    .replace(')', " ) ")
                    .replace(',', " , ");
                let words: Vec<String> = spaced
                    .split_whitespace()
                    .map(|w| match w.to_lowercase().as_str() {
                        "integer" => "bigint".to_owned(),
                        other => other.to_owned(),
                    })
                    .collect();
                words
                    .join(" ")
                    .replace("bigint primary key autoincrement", "bigserial primary key")
            })
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// Every migration of one dialect by file name, normalised.
    fn migrations(dialect: &str) -> BTreeMap<String, Vec<String>> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../migrations")
            .join(dialect);
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| {
                let path = entry.expect("readable directory").path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                let sql = std::fs::read_to_string(&path).expect("readable migration");
                (name, normalised(&sql))
            })
            .collect()
    }

    /// The tables the statements leave behind, each with its columns in order.
    fn tables(statements: &[String]) -> BTreeMap<String, Vec<String>> {
        let mut tables: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for s in statements {
            let words: Vec<&str> = s.split(' ').collect();
            match words.as_slice() {
                ["create", "table", name, "(", rest @ ..] => {
                    // Columns are the first word of each top-level item that is not a
                    // table constraint.
                    let (mut depth, mut start) = (0, true);
                    let columns = tables.entry((*name).to_owned()).or_default();
                    for w in rest {
                        match *w {
                            "(" => depth += 1,
                            ")" => depth -= 1,
                            "," if depth == 0 => start = true,
                            w if start && depth == 0 => {
                                start = false;
                                let constraint =
                                    ["primary", "unique", "foreign", "check", "constraint"];
                                if !constraint.contains(&w) {
                                    columns.push(w.to_owned());
                                }
                            }
                            _ => {}
                        }
                    }
                }
                ["alter", "table", name, "add", "column", column, ..] => tables
                    .entry((*name).to_owned())
                    .or_default()
                    .push((*column).to_owned()),
                _ => {}
            }
        }
        tables
    }

    #[test]
    fn the_normaliser_folds_only_type_names() {
        let sqlite = normalised(
            "-- a\nCREATE TABLE t (seq INTEGER PRIMARY KEY AUTOINCREMENT,\n a INTEGER NOT NULL);",
        );
        let postgres =
            normalised("CREATE TABLE t (\n  seq BIGSERIAL PRIMARY KEY, a BIGINT NOT NULL\n);");
        assert_eq!(sqlite, postgres);
        assert_ne!(
            normalised("CREATE TABLE t (a BIGINT)"),
            normalised("CREATE TABLE t (a TEXT)")
        );
        let cols = tables(&normalised(
            "CREATE TABLE t (a TEXT, b BIGINT DEFAULT (1), PRIMARY KEY (a, b)); \
             ALTER TABLE t ADD COLUMN c TEXT;",
        ));
        assert_eq!(cols["t"], ["a", "b", "c"]);
    }

    /// Both dialects' migrations make the same schema: the same files, and in each the
    /// same statements (tables, columns in order, defaults, indexes) once type names are
    /// folded.
    #[test]
    fn sqlite_and_postgres_migrations_agree() {
        let (sqlite, postgres) = (migrations("sqlite"), migrations("postgres"));
        assert_eq!(
            sqlite.keys().collect::<Vec<_>>(),
            postgres.keys().collect::<Vec<_>>(),
            "the same migration files"
        );
        assert!(sqlite.len() >= 7, "migrations found: {}", sqlite.len());
        let all =
            |m: &BTreeMap<String, Vec<String>>| m.values().flatten().cloned().collect::<Vec<_>>();
        assert_eq!(
            tables(&all(&sqlite)),
            tables(&all(&postgres)),
            "the same tables and columns"
        );
        for (file, statements) in &sqlite {
            let other = &postgres[file];
            assert_eq!(statements.len(), other.len(), "{file}: statement count");
            for (a, b) in statements.iter().zip(other) {
                assert_eq!(a, b, "{file}: the dialects differ");
            }
        }
        let indexes = all(&sqlite)
            .into_iter()
            .filter(|s| s.starts_with("create index") || s.starts_with("create unique index"))
            .count();
        assert!(indexes > 0, "indexes are compared too");
    }

    #[test]
    fn pages_stop_at_the_row_limit_or_the_byte_budget() {
        let rows =
            |sizes: &[i64]| -> Vec<(usize, i64)> { sizes.iter().copied().enumerate().collect() };
        let n = |page: (Vec<usize>, bool)| (page.0.len(), page.1);
        assert_eq!(n(fit_page(&rows(&[1, 1, 1]), 2, 100)), (2, true));
        assert_eq!(n(fit_page(&rows(&[1, 1]), 2, 100)), (2, false));
        assert_eq!(n(fit_page(&rows(&[60, 40, 1]), 5, 100)), (2, true));
        assert_eq!(n(fit_page(&rows(&[60, 41]), 5, 100)), (1, true));
        // A row larger than the whole budget still comes, alone.
        assert_eq!(n(fit_page(&rows(&[500, 1]), 5, 100)), (1, true));
        assert_eq!(n(fit_page(&rows(&[500]), 5, 100)), (1, false));
        assert_eq!(n(fit_page::<usize>(&[], 5, 100)), (0, false));
    }
}
