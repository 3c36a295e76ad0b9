//! Rate limits as token buckets in the store, so that every instance on one
//! store takes from the same bucket: N instances do not give an account N
//! times its rate.
//!
//! A bucket is one row, its theoretical arrival time (`tat`, µs since the
//! Unix epoch; the generic cell rate algorithm): `n` tokens are taken if
//! `max(tat, now) + n·period` is at most `burst·period` ahead of now, and
//! that becomes the new `tat`. The one statement that decides is
//! [`TAKE`]; its WHERE is the condition, its RETURNING says whether it
//! held. A bucket whose `tat` has passed is full, the same as no row, so
//! `maintain` deletes those.
//!
//! Buckets are not history: losing them refills every bucket. On
//! PostgreSQL they are rows of an UNLOGGED table (no WAL, no fsync), each
//! take one autocommitted statement; a SQLite store is served by one
//! process, so its buckets are in an in-memory database of that process
//! and never reach the writer.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

use super::sql::{params, Db};
use super::{Store, StoreError};
use crate::metrics::Limit;

/// A bucket's size and refill: `burst` tokens, one more every `period`.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    pub period: Duration,
    pub burst: u32,
}

/// What a take of tokens found.
#[derive(Debug, PartialEq, Eq)]
pub enum Tokens {
    Taken,
    /// Not enough tokens yet; there will be after this wait.
    Wait(Duration),
    /// More tokens than the whole bucket holds: never.
    OverBurst,
}

/// The bucket's new `tat` (?5: now + n·period) if it is at most ?6
/// (now + burst·period) once the row's own `tat` is counted, else no row.
const TAKE: &str = "INSERT INTO rates (bucket, key, tat) VALUES (?1, ?2, ?5)
    ON CONFLICT (bucket, key) DO UPDATE
    SET tat = (CASE WHEN rates.tat > ?3 THEN rates.tat ELSE ?3 END) + ?4
    WHERE (CASE WHEN rates.tat > ?3 THEN rates.tat ELSE ?3 END) + ?4 <= ?6
    RETURNING tat";

/// The in-memory database of a SQLite store's buckets.
pub(super) fn memory() -> Result<Connection, StoreError> {
    let conn = Connection::open_in_memory()?;
    conn.execute_batch(
        "CREATE TABLE rates (
            bucket INTEGER NOT NULL,
            key    TEXT NOT NULL,
            tat    INTEGER NOT NULL,
            PRIMARY KEY (bucket, key)
        ) STRICT",
    )?;
    Ok(conn)
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn now_micros() -> i64 {
    micros(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default())
}

/// Takes `n` tokens of `key`'s bucket of `limit`, as of `now` (µs).
fn take(c: &Db, limit: Limit, key: &str, n: u32, rate: Rate, now: i64) -> Result<Tokens, StoreError> {
    if n > rate.burst {
        return Ok(Tokens::OverBurst);
    }
    let period = micros(rate.period);
    let cost = period.saturating_mul(i64::from(n));
    let horizon = now.saturating_add(period.saturating_mul(i64::from(rate.burst)));
    let bucket = limit as i64;
    let taken: Option<i64> = c.query_opt(TAKE, params![bucket, key, now, cost, now.saturating_add(cost), horizon], |r| r.get(0))?;
    if taken.is_some() {
        return Ok(Tokens::Taken);
    }
    let tat: Option<i64> = c.query_opt("SELECT tat FROM rates WHERE bucket = ?1 AND key = ?2", params![bucket, key], |r| r.get(0))?;
    let ahead = tat.unwrap_or(now).max(now).saturating_add(cost).saturating_sub(horizon);
    Ok(Tokens::Wait(Duration::from_micros(ahead.max(1) as u64)))
}

impl Store {
    /// Takes `n` tokens of `key`'s bucket of `limit` (sized by `rate`),
    /// shared by every instance on this store.
    pub async fn take_tokens(&self, limit: Limit, key: String, n: u32, rate: Rate) -> Result<Tokens, StoreError> {
        let now = now_micros();
        self.on_rates(move |c| take(c, limit, &key, n, rate, now)).await
    }

    /// Forgets the buckets that are full again (their `tat` has passed);
    /// returns how many.
    pub async fn prune_rates(&self) -> Result<usize, StoreError> {
        let now = now_micros();
        self.on_rates(move |c| c.execute("DELETE FROM rates WHERE tat <= ?1", params![now])).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Rate = Rate { period: Duration::from_secs(10), burst: 3 };

    fn taken(c: &Db, key: &str, n: u32, now: i64) -> Tokens {
        take(c, Limit::Claim, key, n, RATE, now).expect("take")
    }

    #[test]
    fn a_bucket_gives_its_burst_then_one_token_a_period() {
        let conn = memory().expect("memory");
        let c = Db::sqlite(&conn);
        let t0 = 1_000_000_000;
        assert_eq!(taken(&c, "a", 2, t0), Tokens::Taken);
        assert_eq!(taken(&c, "a", 1, t0), Tokens::Taken);
        assert_eq!(taken(&c, "a", 1, t0), Tokens::Wait(Duration::from_secs(10)));
        assert_eq!(taken(&c, "b", 3, t0), Tokens::Taken, "each key has its own bucket");
        assert_eq!(taken(&c, "a", 4, t0), Tokens::OverBurst);
        assert_eq!(taken(&c, "a", 1, t0 + 4_000_000), Tokens::Wait(Duration::from_secs(6)));
        assert_eq!(taken(&c, "a", 1, t0 + 10_000_000), Tokens::Taken);
        assert_eq!(taken(&c, "a", 2, t0 + 10_000_000), Tokens::Wait(Duration::from_secs(20)), "a refusal takes nothing");
        let full = t0 + 40_000_000;
        assert_eq!(c.execute("DELETE FROM rates WHERE tat <= ?1", params![full]).expect("prune"), 2);
        assert_eq!(taken(&c, "a", 3, full), Tokens::Taken, "a pruned bucket is a full one");
    }
}
