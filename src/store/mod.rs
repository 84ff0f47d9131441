//! SQLite through sqlx, in WAL mode: the only code that writes SQL. The schema lives in
//! `migrations/` (checked in, embedded at build time, applied at open).

pub mod alerts;
pub mod bench;
pub mod canary;
pub mod drift;
pub mod embeddings;
pub mod experiments;
pub mod lab;
pub mod requests;
pub mod semantic;
pub mod session_defaults;
pub mod settings;
pub mod threads;

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

/// Why the database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open { path: PathBuf, source: sqlx::Error },
    #[error("database {path}: migration failed: {source}")]
    Migrate {
        path: PathBuf,
        source: sqlx::migrate::MigrateError,
    },
    #[error("database query failed: {0}")]
    Query(#[from] sqlx::Error),
}

/// How long a statement waits for a lock held by another process before it gives up: the
/// callers are on a request's path and treat a failure as "no cache".
const BUSY_TIMEOUT: Duration = Duration::from_millis(250);

/// The application database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
    path: PathBuf,
}

impl Store {
    /// Open (creating it if need be) and migrate the database at `path`.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(2))
            .connect_with(options)
            .await
            .map_err(open_err)?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            pool,
            path: path.to_path_buf(),
        })
    }

    /// A store over a pool that is already migrated (`#[sqlx::test]` hands tests one).
    pub fn from_pool(pool: SqlitePool) -> Self {
        Self {
            pool,
            path: PathBuf::from(":pool:"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Unix seconds now.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opens_migrates_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/lantern.db");
        drop(Store::open(&path).await.unwrap());
        let again = Store::open(&path).await.unwrap();
        assert_eq!(again.path(), path);
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_database_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lantern.db");
        std::fs::write(&path, b"this is not an SQLite file, just some bytes ......").unwrap();
        let err = Store::open(&path).await.unwrap_err();
        assert!(err.to_string().contains("lantern.db"), "{err}");
    }
}
