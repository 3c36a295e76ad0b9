//! The store: the only code that touches SQL.
//!
//! SQLite in WAL mode. One writer thread owns the write connection and
//! commits whatever requests are queued in one transaction (each request in
//! its own savepoint, so one failing request does not undo the others):
//! durability costs one fsync per batch, not per stanza, and a request is
//! answered only after its batch is committed. Reads run on a small pool of
//! separate connections, off the writer's path. CPU work that leads to a
//! write (MLS validation) runs before the write request, against what was
//! read; the request then decides with a predicate on the rows as they are
//! (the epoch's compare-and-swap), so a stale read loses instead of winning.
//!
//! The single writer is a throughput choice, never what makes a decision
//! correct: every decision (a vault compare-and-swap, a KeyPackage claim,
//! a quota, a count limit) is one statement whose WHERE or ON CONFLICT is
//! the condition, read back from rows affected or RETURNING, or is taken
//! under an explicit row lock that its doc comment names. Never a read
//! followed by a write that trusts it: the same SQL must stay correct with
//! several writers at PostgreSQL's READ COMMITTED. A refusal found after
//! earlier statements of the same decision undoes them (`undo_refused`).

mod admin;
mod archive;
pub mod baseline;
mod devices;
mod groups;
mod inbox;
mod keypackages;
pub mod order;
mod parts;
mod pg_schema;
mod rates;
pub mod local;
pub mod mls;
mod schema;
mod sender;
pub mod sql;
pub mod state;
mod turns;
mod usage;
mod vault;

/// The log targets of the migration libraries the stores use (the
/// service's schema, and openmls' SQLite storage in a client's state): each
/// logs every migration at info, which the process log keeps at warn.
pub const MIGRATION_LOG_TARGETS: &[&str] = &["rusqlite_migration", "refinery"];

pub use admin::{AccountSummary, DeviceStock, GroupSummary, MemberDevice, PurgedAccount, Stats};
pub use archive::{stanza_id, Filter, Item, Page, PageStart, Source};
pub use devices::{DevicePublish, Expired};
pub use sender::ServiceKey;
pub use groups::{
    Acceptance, AppendOutcome, ArchiveBudget, Archived, Departed, FeedEntry, FeedJoin, GroupLeave, GroupState, GroupTx, Join, Member, StateWrite,
};
pub use inbox::{new_stanza_id, StoredNotice};
pub use keypackages::{ClaimContext, ClaimResult, KeyPackageUpload};
pub use parts::Upload;
pub use rates::{Rate, Tokens};
pub use vault::{VaultLimits, VaultPage, VaultWrite};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::cell::RefCell;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{oneshot, Semaphore};

use crate::config::{StoreConfig, Synchronous};
use sql::{Db, Pg};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL error: {0}{detail}", detail = .0.as_db_error().map(|e| format!(": {e}")).unwrap_or_default())]
    Postgres(#[from] ::postgres::Error),
    #[error("the statement returned no row")]
    NoRow,
    #[error("not available on this store: {0}")]
    Unsupported(&'static str),
    #[error("schema migration failed: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    #[error("the write batch failed: {0}")]
    Batch(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the store is closed")]
    Closed,
    #[error("a write request panicked: {0}")]
    Panicked(String),
    #[error("the group's archive has reached its last position")]
    ArchiveFull,
}

type Finish = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// A write request: runs inside the batch's transaction and says whether it
/// succeeded (else its savepoint is rolled back) and how to answer.
type Job = Box<dyn FnOnce(&Connection) -> (bool, Finish) + Send>;

#[derive(Clone)]
pub struct Store {
    inner: Arc<Engine>,
    /// The archive positions this process took and has not delivered.
    order: Arc<order::Order>,
}

/// The database under the store.
enum Engine {
    /// SQLite: one writer thread, batching; read connections beside it.
    Sqlite {
        path: PathBuf,
        jobs: Mutex<Option<mpsc::Sender<Job>>>,
        writer: Mutex<Option<JoinHandle<()>>>,
        readers: Mutex<Vec<Connection>>,
        max_readers: usize,
        /// The rate buckets (rates.rs), in memory.
        rates: Mutex<Connection>,
    },
    /// PostgreSQL: each request in its own transaction on a connection of
    /// a bounded pool, on a blocking thread; requests run concurrently.
    Postgres {
        url: String,
        idle: Mutex<Vec<Pg>>,
        permits: Arc<Semaphore>,
        /// Held by each request taken until it is answered.
        requests: Arc<()>,
        closing: AtomicBool,
    },
}

impl Store {
    /// Opens (creating if needed) and migrates the database: PostgreSQL if
    /// `config.url` is set, else the SQLite file `config.path`.
    pub fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        let engine = match config.url.is_empty() {
            true => open_sqlite(config)?,
            false => open_postgres(config)?,
        };
        Ok(Self { inner: Arc::new(engine), order: Arc::default() })
    }

    /// Where the store is, for the log: never a password.
    pub fn describe(config: &StoreConfig) -> String {
        match config.url.is_empty() {
            true => format!("sqlite:{}", config.path.display()),
            false => "postgresql".into(),
        }
    }

    /// Runs `f` as one write request; resolves once it is durable. If `f`
    /// fails or panics, its changes are rolled back and its error returned.
    /// On SQLite, `f` runs in the writer's next batch (in a savepoint of
    /// its own: the batch's other requests go on); on PostgreSQL, in a
    /// transaction of its own.
    async fn write<R: Send + 'static, E: From<StoreError> + Send + 'static>(
        &self,
        f: impl FnOnce(&Db) -> Result<R, E> + Send + 'static,
    ) -> Result<R, E> {
        match &*self.inner {
            Engine::Sqlite { jobs, .. } => {
                let (tx, rx) = oneshot::channel();
                let job: Job = Box::new(move |conn| {
                    let result = contain(|| f(&Db::sqlite(conn))).unwrap_or_else(|e| Err(E::from(e)));
                    let ok = result.is_ok();
                    let finish: Finish = Box::new(move |committed| {
                        let _ = tx.send(committed.map_err(E::from).and(result));
                    });
                    (ok, finish)
                });
                let sender = jobs.lock().expect("jobs lock").clone();
                sender.ok_or(StoreError::Closed)?.send(job).map_err(|_| StoreError::Closed)?;
                rx.await.map_err(|_| E::from(StoreError::Closed))?
            }
            Engine::Postgres { .. } => {
                self.on_postgres(move |c| {
                    let started = std::time::Instant::now();
                    c.execute_batch("BEGIN")?;
                    let result = contain(|| f(c)).unwrap_or_else(|e| Err(E::from(e)));
                    c.execute_batch(if result.is_ok() { "COMMIT" } else { "ROLLBACK" })?;
                    crate::metrics::metrics().write_batch(1, started.elapsed());
                    Ok(result)
                })
                .await
                .unwrap_or_else(|e| Err(E::from(e)))
            }
        }
    }

    /// Runs `f` on a read connection, on a blocking thread.
    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Db) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        if let Engine::Postgres { .. } = &*self.inner {
            return self.on_postgres(f).await;
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let Engine::Sqlite { path, readers, max_readers, .. } = &*inner else { unreachable!("a SQLite store") };
            let conn = match readers.lock().expect("readers lock").pop() {
                Some(conn) => conn,
                None => open_reader(path)?,
            };
            let result = f(&Db::sqlite(&conn));
            let mut pool = readers.lock().expect("readers lock");
            if pool.len() < *max_readers {
                pool.push(conn);
            }
            result
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` on a PostgreSQL connection of the pool, on a blocking
    /// thread, once one of the pool's permits is free. The request is a
    /// task of its own from its first poll, as SQLite's queued job is: it
    /// is answered (and `close` waits for it) even if its caller stops
    /// polling. A connection that failed is dropped, not pooled.
    async fn on_postgres<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Db) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let Engine::Postgres { permits, requests, closing, .. } = &*self.inner else { unreachable!("a PostgreSQL store") };
        if closing.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let (inner, permits, taken) = (self.inner.clone(), permits.clone(), requests.clone());
        let request = tokio::spawn(async move {
            let permit = permits.acquire_owned().await.map_err(|_| StoreError::Closed)?;
            tokio::task::spawn_blocking(move || {
                let Engine::Postgres { url, idle, .. } = &*inner else { unreachable!("a PostgreSQL store") };
                let pooled = idle.lock().expect("pool lock").pop();
                let conn = RefCell::new(match pooled {
                    Some(pg) => pg,
                    None => Pg::connect(url)?,
                });
                let result = f(&Db::postgres(&conn));
                let conn = conn.into_inner();
                if conn.is_usable() {
                    idle.lock().expect("pool lock").push(conn);
                }
                drop((permit, taken));
                result
            })
            .await
            .map_err(|_| StoreError::Closed)?
        });
        request.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` on the rate buckets: SQLite's in-memory database (a few
    /// microseconds under its lock), or a pooled PostgreSQL connection
    /// without a transaction (each statement commits on its own).
    async fn on_rates<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Db) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        match &*self.inner {
            Engine::Sqlite { rates, .. } => f(&Db::sqlite(&rates.lock().expect("rates lock"))),
            Engine::Postgres { .. } => self.on_postgres(f).await,
        }
    }

    /// Delivery in archive order, of the positions this process takes.
    pub fn order(&self) -> &Arc<order::Order> {
        &self.order
    }

    /// True if the store is on PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(*self.inner, Engine::Postgres { .. })
    }

    /// Bytes of the database in use: what the stored data costs on disk,
    /// for benchmarks (SQLite: its pages in use, free pages left out).
    pub async fn used_bytes(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            let sql = match c.is_postgres() {
                true => "SELECT pg_database_size(current_database())",
                false => {
                    "SELECT (p.page_count - f.freelist_count) * s.page_size
                     FROM pragma_page_count() p, pragma_freelist_count() f, pragma_page_size() s"
                }
            };
            Ok(c.query_row(sql, sql::params![], |r| r.get::<i64>(0))? as u64)
        })
        .await
    }

    /// Stops taking requests, and answers those taken: SQLite commits what
    /// is queued and waits for the writer; PostgreSQL waits for the
    /// requests in flight, then closes its connections.
    pub async fn close(&self) {
        match &*self.inner {
            Engine::Sqlite { jobs, writer, .. } => {
                drop(jobs.lock().expect("jobs lock").take());
                let writer = writer.lock().expect("writer lock").take();
                if let Some(handle) = writer {
                    let _ = tokio::task::spawn_blocking(move || handle.join()).await;
                }
            }
            Engine::Postgres { idle, permits, requests, closing, .. } => {
                closing.store(true, Ordering::Release);
                while Arc::strong_count(requests) > 1 {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                permits.close();
                let conns = std::mem::take(&mut *idle.lock().expect("pool lock"));
                let _ = tokio::task::spawn_blocking(move || drop(conns)).await;
            }
        }
    }
}

impl Drop for Engine {
    /// A PostgreSQL connection closes by blocking on its own runtime, which
    /// an async task's thread must not do: the idle ones close on a thread
    /// of their own.
    fn drop(&mut self) {
        if let Engine::Postgres { idle, .. } = self {
            let conns = std::mem::take(idle.get_mut().expect("pool lock"));
            if !conns.is_empty() {
                std::thread::spawn(move || drop(conns));
            }
        }
    }
}

fn open_sqlite(config: &StoreConfig) -> Result<Engine, StoreError> {
    let mut conn = Connection::open(&config.path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let sync = match config.synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Claimed KeyPackages, pruned history and deleted vault blobs are
    // overwritten, not left in free pages.
    conn.pragma_update(None, "secure_delete", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Room for every statement of the hot paths (the default keeps 16).
    conn.set_prepared_statement_cache_capacity(64);
    schema::migrate(&mut conn)?;
    mls::migrate(&mut conn)?;
    mls::convert_public_groups(&mut conn)?;
    let (tx, rx) = mpsc::channel::<Job>();
    let batch_max = config.batch_max;
    let writer = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || write_loop(conn, rx, batch_max))?;
    Ok(Engine::Sqlite {
        path: config.path.clone(),
        jobs: Mutex::new(Some(tx)),
        writer: Mutex::new(Some(writer)),
        readers: Mutex::new(Vec::new()),
        max_readers: config.readers,
        rates: Mutex::new(rates::memory()?),
    })
}

/// Connects and migrates. Called where blocking is allowed (at start,
/// before the runtime's tasks; on a blocking thread).
fn open_postgres(config: &StoreConfig) -> Result<Engine, StoreError> {
    let url = config.url.clone();
    let first = std::thread::spawn(move || -> Result<Pg, StoreError> {
        let conn = RefCell::new(Pg::connect(&url)?);
        pg_schema::migrate(&Db::postgres(&conn))?;
        Ok(conn.into_inner())
    })
    .join()
    .map_err(|_| StoreError::Panicked("connecting to PostgreSQL".into()))??;
    Ok(Engine::Postgres {
        url: config.url.clone(),
        idle: Mutex::new(vec![first]),
        permits: Arc::new(Semaphore::new(config.connections)),
        requests: Arc::new(()),
        closing: AtomicBool::new(false),
    })
}

/// A connection of its own to a store's database, beside the component's
/// (which may be running): for tools and tests that read or change rows
/// directly. Blocking: call it from a thread of its own, never from an
/// async task.
pub struct Inspector {
    conn: Inspected,
}

enum Inspected {
    Sqlite(Connection),
    Postgres(RefCell<Pg>),
}

impl Inspector {
    pub fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        let conn = match config.url.is_empty() {
            true => {
                let conn = Connection::open(&config.path)?;
                conn.busy_timeout(std::time::Duration::from_secs(5))?;
                Inspected::Sqlite(conn)
            }
            false => Inspected::Postgres(RefCell::new(Pg::connect(&config.url)?)),
        };
        Ok(Inspector { conn })
    }

    /// Runs `f` on the connection (each statement on its own, unless `f`
    /// takes a snapshot).
    pub fn with<T>(&self, f: impl FnOnce(&Db) -> Result<T, StoreError>) -> Result<T, StoreError> {
        match &self.conn {
            Inspected::Sqlite(conn) => f(&Db::sqlite(conn)),
            Inspected::Postgres(conn) => f(&Db::postgres(conn)),
        }
    }
}

/// Runs one write request, turning a panic into an error. Unwinding out of
/// `f` is safe to stop here: the caller rolls the request's savepoint back,
/// and the statements that `f` held were reset when they were dropped.
fn contain<T>(f: impl FnOnce() -> T) -> Result<T, StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        tracing::error!(panic = %what, "a write request panicked: rolled back");
        StoreError::Panicked(what)
    })
}

/// Runs the statements of one decision in a savepoint of their own:
/// `Ok(Ok(t))` keeps them, `Ok(Err(t))` (a refusal, answered with `t`)
/// and `Err` undo them, so a refused decision changes nothing.
pub(super) fn undo_refused<T>(
    c: &Db,
    decide: impl FnOnce() -> Result<Result<T, T>, StoreError>,
) -> Result<T, StoreError> {
    c.execute_batch("SAVEPOINT decision")?;
    let outcome = decide();
    let closed = match &outcome {
        Ok(Ok(_)) => c.execute_batch("RELEASE decision"),
        _ => c.execute_batch("ROLLBACK TO decision; RELEASE decision"),
    };
    match (outcome?, closed) {
        (_, Err(e)) => Err(e.into()),
        (Ok(t) | Err(t), Ok(())) => Ok(t),
    }
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

fn write_loop(conn: Connection, jobs: mpsc::Receiver<Job>, batch_max: usize) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < batch_max {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        run_batch(&conn, batch);
    }
    // Closing: fold the WAL back into the database file, so that a copy of
    // the file alone is a complete backup.
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
        tracing::warn!(error = %e, "final checkpoint failed");
    }
}

fn run_batch(conn: &Connection, batch: Vec<Job>) {
    let size = batch.len();
    let started = std::time::Instant::now();
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        tracing::error!(error = %e, "cannot begin a write batch");
        let msg = e.to_string();
        for job in batch {
            // The job never ran; answer it with the failure.
            let (_, finish) = job(conn);
            finish(Err(StoreError::Batch(msg.clone())));
        }
        return;
    }
    let mut finishes = Vec::with_capacity(size);
    for job in batch {
        let savepoint = conn.execute_batch("SAVEPOINT job");
        let (ok, finish) = job(conn);
        let closed = if ok && savepoint.is_ok() {
            conn.execute_batch("RELEASE job")
        } else {
            conn.execute_batch("ROLLBACK TO job; RELEASE job")
        };
        if let Err(e) = closed {
            tracing::error!(error = %e, "savepoint failed");
        }
        finishes.push(finish);
    }
    let committed = conn.execute_batch("COMMIT");
    if committed.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    tracing::trace!(size, ok = committed.is_ok(), "write batch");
    crate::metrics::metrics().write_batch(size, started.elapsed());
    for finish in finishes {
        finish(match &committed {
            Ok(()) => Ok(()),
            Err(e) => Err(StoreError::Batch(e.to_string())),
        });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::sql::params;
    use super::*;

    /// A store's place for one test: a SQLite file in a temporary
    /// directory or, when `XMPP_TEST_POSTGRES` holds a PostgreSQL server's
    /// connection string, a new database there (dropped with this).
    pub(crate) struct Scratch {
        _dir: tempfile::TempDir,
        pub config: StoreConfig,
        server: Option<String>,
    }

    impl Scratch {
        pub(crate) fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let mut config = StoreConfig { path: dir.path().join("t.sqlite3"), ..StoreConfig::default() };
            let server = std::env::var("XMPP_TEST_POSTGRES").ok().filter(|s| !s.is_empty());
            if let Some(server) = &server {
                static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
                let name = format!("u{}_{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
                on_server(server, &format!("CREATE DATABASE {name}"));
                config.url = format!("{server} dbname={name}");
            }
            Scratch { _dir: dir, config, server }
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            if let (Some(server), Some((_, name))) = (&self.server, self.config.url.rsplit_once("dbname=")) {
                on_server(server, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        }
    }

    fn on_server(server: &str, sql: &str) {
        let config = StoreConfig { url: server.into(), ..StoreConfig::default() };
        let (config, sql) = (config.clone(), sql.to_owned());
        std::thread::spawn(move || Inspector::open(&config).and_then(|i| i.with(|c| c.execute_batch(&sql))).unwrap())
            .join()
            .unwrap();
    }

    pub(crate) fn temp_store() -> (Scratch, Store) {
        let scratch = Scratch::new();
        let store = Store::open(&scratch.config).unwrap();
        (scratch, store)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_are_batched_and_each_is_durable_when_answered() {
        let (_dir, store) = temp_store();
        store.write(|c| Ok::<_, StoreError>(c.execute_batch("CREATE TABLE t (n INTEGER NOT NULL)")?)).await.unwrap();
        let tasks: Vec<_> = (0..200)
            .map(|n| {
                let store = store.clone();
                tokio::spawn(async move {
                    store.write(move |c| Ok::<_, StoreError>(c.execute("INSERT INTO t VALUES (?1)", params![n])?)).await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), 1);
        }
        let count: i64 =
            store.read(|c| Ok(c.query_row("SELECT count(*) FROM t", params![], |r| r.get(0))?)).await.unwrap();
        assert_eq!(count, 200);
    }

    /// A store with an empty table `t (n INTEGER PRIMARY KEY)`.
    async fn table_store() -> (Scratch, Store) {
        let (dir, store) = temp_store();
        store
            .write(|c| Ok::<_, StoreError>(c.execute_batch("CREATE TABLE t (n INTEGER PRIMARY KEY)")?))
            .await
            .unwrap();
        (dir, store)
    }

    async fn rows_of_t(store: &Store) -> Vec<i64> {
        store
            .read(|c| {
                c.query_map("SELECT n FROM t ORDER BY n", params![], |r| r.get(0))
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_failing_request_does_not_undo_its_batch_neighbours() {
        let (_dir, store) = table_store().await;
        // A key committed before: the failing request's duplicate, whatever
        // order PostgreSQL's concurrent requests run in.
        store.write(|c| Ok::<_, StoreError>(c.execute("INSERT INTO t VALUES (0)", params![])?)).await.unwrap();
        let ok1 = store.write(|c| Ok::<_, StoreError>(c.execute("INSERT INTO t VALUES (1)", params![])?));
        let bad = store.write(|c| {
            c.execute("INSERT INTO t VALUES (2)", params![])?;
            Ok::<_, StoreError>(c.execute("INSERT INTO t VALUES (0)", params![])?) // duplicate key
        });
        let ok3 = store.write(|c| Ok::<_, StoreError>(c.execute("INSERT INTO t VALUES (3)", params![])?));
        let (a, b, c) = tokio::join!(ok1, bad, ok3);
        assert!(a.is_ok() && c.is_ok());
        assert!(matches!(b, Err(StoreError::Sqlite(_) | StoreError::Postgres(_))), "{b:?}");
        assert_eq!(rows_of_t(&store).await, vec![0, 1, 3], "the failed request's first insert is rolled back");
    }

    #[tokio::test]
    async fn a_panicking_request_is_rolled_back_and_the_writer_goes_on() {
        let (_dir, store) = table_store().await;
        let ok1 = store.write(|c| Ok::<_, StoreError>(c.execute("INSERT INTO t VALUES (1)", params![])?));
        let panics = store.write(|c| -> Result<usize, StoreError> {
            c.execute("INSERT INTO t VALUES (2)", params![])?;
            panic!("injected")
        });
        let ok3 = store.write(|c| Ok::<_, StoreError>(c.execute("INSERT INTO t VALUES (3)", params![])?));
        let (a, b, c) = tokio::join!(ok1, panics, ok3);
        assert_eq!((a.unwrap(), c.unwrap()), (1, 1), "the batch's other requests are committed");
        assert!(matches!(b, Err(StoreError::Panicked(ref what)) if what == "injected"), "{b:?}");
        let later = store.write(|c| Ok::<_, StoreError>(c.execute("INSERT INTO t VALUES (4)", params![])?)).await;
        assert_eq!(later.unwrap(), 1, "the writer survived");
        assert_eq!(rows_of_t(&store).await, vec![1, 3, 4], "the panicking request's insert is rolled back");
    }

    /// A refused decision undoes its statements; a kept one keeps them,
    /// and the request's other statements stay either way.
    #[tokio::test]
    async fn a_refused_decision_changes_nothing() {
        let (_dir, store) = table_store().await;
        let decide = |keep: bool| {
            store.write(move |c| {
                c.execute("INSERT INTO t VALUES (?1)", params![i64::from(keep)])?;
                undo_refused(c, || {
                    c.execute("INSERT INTO t VALUES (?1)", params![10 + i64::from(keep)])?;
                    Ok(if keep { Ok("kept") } else { Err("refused") })
                })
            })
        };
        assert_eq!(decide(false).await.unwrap(), "refused");
        assert_eq!(decide(true).await.unwrap(), "kept");
        assert_eq!(rows_of_t(&store).await, vec![0, 1, 11]);
    }

    #[tokio::test]
    async fn close_commits_every_queued_write_then_refuses_more() {
        let (scratch, store) = temp_store();
        store.write(|c| Ok::<_, StoreError>(c.execute_batch("CREATE TABLE t (n INTEGER)")?)).await.unwrap();
        let mut queued: Vec<_> = (0..50)
            .map(|n| Box::pin(store.write(move |c| Ok::<_, StoreError>(c.execute("INSERT INTO t VALUES (?1)", params![n])?))))
            .collect();
        for f in &mut queued {
            let _ = futures::poll!(f.as_mut()); // enqueues the request
        }
        store.close().await;
        for f in queued {
            assert_eq!(f.await.unwrap(), 1);
        }
        assert!(matches!(store.write(|_| Ok::<_, StoreError>(())).await, Err(StoreError::Closed)));
        let again = Store::open(&scratch.config).unwrap();
        let n: i64 = again.read(|c| c.query_row("SELECT count(*) FROM t", params![], |r| r.get(0))).await.unwrap();
        assert_eq!(n, 50);
        again.close().await;
    }
}
