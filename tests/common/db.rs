//! The component's store, read and changed by SQL beside the running
//! component, on the backend the suite runs on: a SQLite file in the
//! component's directory, or, when `XMPP_TEST_POSTGRES` holds the
//! connection string of a PostgreSQL server (scripts/test starts a private
//! one), a new database on that server for each component.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use xmpp_mls::config::StoreConfig;
use xmpp_mls::store::sql::{Column, Db, Param};
use xmpp_mls::store::{Inspector, StoreError};

/// The PostgreSQL server the suite runs on, if any.
pub fn postgres() -> Option<String> {
    std::env::var("XMPP_TEST_POSTGRES").ok().filter(|s| !s.is_empty())
}

/// A store for a new component whose files are in `dir`: the SQLite file
/// `dir/store.sqlite3`, or a new, empty database on the PostgreSQL server.
pub fn new_store(dir: &Path) -> StoreConfig {
    let mut config = StoreConfig { path: dir.join("store.sqlite3"), ..StoreConfig::default() };
    if let Some(server) = postgres() {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("t{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let admin = StoreDb { config: StoreConfig { url: server.clone(), ..StoreConfig::default() } };
        admin.with(|c| c.execute_batch(&format!("CREATE DATABASE {name}")));
        config.url = format!("{server} dbname={name}");
    }
    config
}

/// The `[store]` section of a component's configuration for `config`.
pub fn store_section(config: &StoreConfig) -> String {
    match config.url.is_empty() {
        true => format!("[store]\npath = \"{}\"\n", config.path.display()),
        false => format!("[store]\nurl = \"{}\"\n", config.url),
    }
}

/// Drops a store made by [`new_store`] on PostgreSQL (a SQLite file goes
/// with its directory).
pub fn drop_store(config: &StoreConfig) {
    let (Some(server), Some(name)) = (postgres(), config.url.rsplit_once("dbname=").map(|(_, n)| n.to_owned())) else {
        return;
    };
    let admin = StoreDb { config: StoreConfig { url: server, ..StoreConfig::default() } };
    admin.with(|c| c.execute_batch(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")));
}

/// Every table's rows, each row its values' octets (see [`StoreDb::dump`]).
pub type Dump = Vec<(String, Vec<Vec<Vec<u8>>>)>;

/// A store, inspected by SQL (`?N` placeholders on both backends). Each
/// call opens a connection of its own on a thread of its own, so it may be
/// called from async tests.
#[derive(Clone)]
pub struct StoreDb {
    pub config: StoreConfig,
}

impl StoreDb {
    pub fn is_postgres(&self) -> bool {
        !self.config.url.is_empty()
    }

    /// Runs `f` on a connection to the store.
    pub fn with<T: Send>(&self, f: impl FnOnce(&Db) -> Result<T, StoreError> + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| Inspector::open(&self.config).and_then(|i| i.with(f)).unwrap_or_else(|e| panic!("store: {e}")))
                .join()
                .unwrap()
        })
    }

    /// The first column of the one row `sql` returns.
    pub fn one<T: Column + Send>(&self, sql: &str, params: &[&dyn Param]) -> T {
        self.with(|c| c.query_row(sql, params, |r| r.get(0)))
    }

    /// The first column of the row `sql` returns, if any.
    pub fn opt<T: Column + Send>(&self, sql: &str, params: &[&dyn Param]) -> Option<T> {
        self.with(|c| c.query_opt(sql, params, |r| r.get(0)))
    }

    /// The first column of every row `sql` returns.
    pub fn all<T: Column + Send>(&self, sql: &str, params: &[&dyn Param]) -> Vec<T> {
        self.with(|c| c.query_map(sql, params, |r| r.get(0)))
    }

    /// The first two columns of the one row `sql` returns.
    pub fn two<A: Column + Send, B: Column + Send>(&self, sql: &str, params: &[&dyn Param]) -> (A, B) {
        self.with(|c| c.query_row(sql, params, |r| Ok((r.get(0)?, r.get(1)?))))
    }

    /// Runs one statement; the rows it changed.
    pub fn execute(&self, sql: &str, params: &[&dyn Param]) -> usize {
        self.with(|c| c.execute(sql, params))
    }

    /// The store's tables, by name.
    pub fn tables(&self) -> Vec<String> {
        let sql = match self.is_postgres() {
            true => "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
            false => "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
        };
        self.all(sql, &[])
    }

    /// Every row of every table, each value as its octets (text as UTF-8,
    /// integers in decimal), in a stable order: equal dumps are equal stores.
    /// Not the rate buckets (PostgreSQL's `rates`; SQLite keeps them in
    /// memory): every stanza takes from them, refused or not.
    pub fn dump(&self) -> Dump {
        let tables = self.tables().into_iter().filter(|t| t != "rates");
        self.with(|c| {
            let mut out = Vec::new();
            for table in tables {
                let columns = column_count(c, &table)?;
                let sql = format!("SELECT * FROM {table} ORDER BY {}", (1..=columns).map(|i| i.to_string()).collect::<Vec<_>>().join(", "));
                let rows = c.query_map(&sql, &[], |r| (0..columns).map(|i| value_octets(r, i)).collect())?;
                out.push((table, rows));
            }
            Ok(out)
        })
    }
}

fn column_count(c: &Db, table: &str) -> Result<usize, StoreError> {
    let sql = match c.is_postgres() {
        true => "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'public' AND table_name = ?1",
        false => "SELECT count(*) FROM pragma_table_info(?1)",
    };
    Ok(c.query_row(sql, xmpp_mls::store_params![table], |r| r.get::<i64>(0))? as usize)
}

fn value_octets(r: &xmpp_mls::store::sql::Row, i: usize) -> Result<Vec<u8>, StoreError> {
    if let Ok(n) = r.get::<Option<i64>>(i) {
        return Ok(n.map(|n| n.to_string().into_bytes()).unwrap_or_default());
    }
    if let Ok(s) = r.get::<String>(i) {
        return Ok(s.into_bytes());
    }
    r.get::<Vec<u8>>(i)
}
