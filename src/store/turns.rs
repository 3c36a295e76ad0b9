//! Turns: jobs that one instance at a time runs (maintenance), held as a
//! lease row. An instance takes the job's turn if nobody holds it or its
//! holder let it lapse, and renews it each time it runs the job; an
//! instance that dies keeps it until it lapses, one that stops gives it up.
//!
//! A row, not an advisory lock: a session's lock would pin one pooled
//! connection for the process's life and vanish unseen with it, and SQLite
//! has none; the row is the same compare-and-swap on both engines.

use super::sql::params;
use super::{Store, StoreError};

/// The job's row becomes `holder`'s until `until` if it was `holder`'s or
/// lapsed by `now`; the RETURNING row says it did.
const TAKE: &str = "INSERT INTO turns (job, holder, until) VALUES (?1, ?2, ?4)
    ON CONFLICT (job) DO UPDATE SET holder = ?2, until = ?4
    WHERE turns.holder = ?2 OR turns.until <= ?3
    RETURNING holder";

impl Store {
    /// Takes or renews `job`'s turn for `holder` until `until` (seconds),
    /// as of `now`: true if `holder` has it now.
    pub async fn take_turn(&self, job: &'static str, holder: String, now: i64, until: i64) -> Result<bool, StoreError> {
        self.write(move |c| {
            let held: Option<String> = c.query_opt(TAKE, params![job, holder, now, until], |r| r.get(0))?;
            Ok(held.is_some())
        })
        .await
    }

    /// Gives `job`'s turn up if `holder` has it, so that another instance
    /// takes it at once rather than when it would have lapsed.
    pub async fn give_up_turn(&self, job: &'static str, holder: String) -> Result<(), StoreError> {
        self.write(move |c| c.execute("DELETE FROM turns WHERE job = ?1 AND holder = ?2", params![job, holder]).map(drop))
            .await
    }
}

#[cfg(test)]
mod tests {
    use crate::store::tests::temp_store;

    #[tokio::test]
    async fn one_holder_at_a_time_until_it_lapses_or_is_given_up() {
        let (_scratch, store) = temp_store();
        let take = |holder: &str, now| store.take_turn("maintenance", holder.into(), now, now + 10);
        assert!(take("a", 100).await.unwrap());
        assert!(!take("b", 105).await.unwrap(), "a holds it until 110");
        assert!(take("a", 108).await.unwrap(), "a renews it until 118");
        assert!(!take("b", 115).await.unwrap());
        assert!(take("b", 118).await.unwrap(), "a let it lapse");
        store.give_up_turn("maintenance", "a".into()).await.unwrap();
        assert!(!take("a", 119).await.unwrap(), "only the holder gives it up");
        store.give_up_turn("maintenance", "b".into()).await.unwrap();
        assert!(take("a", 119).await.unwrap());
        store.close().await;
    }
}
