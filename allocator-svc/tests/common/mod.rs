//! Fresh stores for tests: an SQLite file, or a PostgreSQL database of its own per test.
#![allow(dead_code)]

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use ferrolb_allocator::store::{SqlStore, StoreOptions};

/// Where the test PostgreSQL server is; `FERROLB_TEST_PG` overrides it.
pub fn pg_base() -> String {
    std::env::var("FERROLB_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A database that is dropped when the guard goes.
pub struct TestDb {
    pub url: String,
    name: Option<String>,
    _dir: Option<std::path::PathBuf>,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = &self.name {
            let _ = Command::new("psql")
                .args([
                    &format!("{}/postgres", pg_base()),
                    "-qc",
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                ])
                .output();
        }
        if let Some(dir) = &self._dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    )
}

/// A new empty PostgreSQL database. Fails the test, with the reason, if PostgreSQL is missing.
pub fn pg_db() -> TestDb {
    let name = unique("ferrolb_test");
    let out = Command::new("psql")
        .args([
            &format!("{}/postgres", pg_base()),
            "-qc",
            &format!("CREATE DATABASE {name}"),
        ])
        .output()
        .expect(
            "psql must be installed: the store tests need PostgreSQL (scripts/test installs it)",
        );
    assert!(
        out.status.success(),
        "cannot create a test database on {} (is PostgreSQL running? scripts/test starts it): {}",
        pg_base(),
        String::from_utf8_lossy(&out.stderr)
    );
    TestDb {
        url: format!("{}/{name}", pg_base()),
        name: Some(name),
        _dir: None,
    }
}

/// A new SQLite file in a temporary directory.
pub fn sqlite_db() -> TestDb {
    let dir = std::env::temp_dir().join(unique("ferrolb-test"));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    TestDb {
        url: format!("sqlite://{}?mode=rwc", dir.join("store.db").display()),
        name: None,
        _dir: Some(dir),
    }
}

impl TestDb {
    /// The PostgreSQL database's name.
    pub fn name(&self) -> &str {
        self.name.as_deref().expect("a PostgreSQL test database")
    }

    /// Runs SQL as the superuser on the server, connected to `database`; fails the test with
    /// psql's message if it fails.
    pub fn psql(&self, database: &str, sql: &str) {
        let out = Command::new("psql")
            .args([
                &format!("{}/{database}", pg_base()),
                "-v",
                "ON_ERROR_STOP=1",
                "-qc",
                sql,
            ])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

pub async fn open(db: &TestDb) -> SqlStore {
    SqlStore::connect(StoreOptions::new(db.url.clone()))
        .await
        .unwrap_or_else(|e| panic!("cannot open the store at {}: {e}", db.url))
}

/// Runs a store test on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! both_stores {
    ($($name:ident => $body:ident;)*) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = $crate::common::sqlite_db();
                    super::$body($crate::common::open(&db).await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = $crate::common::pg_db();
                    super::$body($crate::common::open(&db).await).await;
                }
            )*
        }
    };
}
