//! What the store's paths are measured against (scripts/bench): the bare
//! SQLite operation, without the store's batching, checks and indexes.

use std::path::Path;
use std::time::Instant;

use super::StoreError;

/// Claims per second of a bare SQLite table of KeyPackages, one claim per
/// transaction (WAL, synchronous=FULL, as the store), after inserting
/// `messages` into a new file in `dir`.
pub fn bare_claims_per_second<'a>(dir: &Path, messages: impl Iterator<Item = &'a [u8]>) -> Result<f64, StoreError> {
    let conn = rusqlite::Connection::open(dir.join("raw.sqlite3"))?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
         CREATE TABLE kp (id INTEGER PRIMARY KEY, data BLOB NOT NULL);",
    )?;
    let mut n = 0;
    for m in messages {
        conn.execute("INSERT INTO kp (data) VALUES (?1)", [m])?;
        n += 1;
    }
    let t = Instant::now();
    for _ in 0..n {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let _: Vec<u8> =
            conn.query_row("DELETE FROM kp WHERE id = (SELECT min(id) FROM kp) RETURNING data", [], |r| r.get(0))?;
        conn.execute_batch("COMMIT")?;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}
