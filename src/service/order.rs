//! Delivery in archive order: messages of one group go out in the order of
//! their archive positions, although they are validated and committed
//! concurrently (and in batches).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

/// How long a delivery waits for its predecessor (lost, e.g., with a
/// connection) before it goes out anyway; clients catch up from the archive.
const MAX_WAIT: Duration = Duration::from_secs(2);

#[derive(Default)]
pub struct Order {
    /// Last archive position delivered, per group.
    delivered: Mutex<HashMap<Vec<u8>, u64>>,
    changed: Notify,
}

impl Order {
    /// Starts from the store's positions (what was archived before).
    pub fn new(positions: Vec<(Vec<u8>, u64)>) -> Self {
        Order { delivered: Mutex::new(positions.into_iter().collect()), changed: Notify::new() }
    }

    /// Waits until everything before `seq` in `group` went out.
    pub async fn wait_turn(&self, group: &[u8], seq: u64) {
        let deadline = tokio::time::Instant::now() + MAX_WAIT;
        loop {
            let notified = self.changed.notified();
            let last = self.delivered.lock().expect("order lock").get(group).copied().unwrap_or(0);
            if last + 1 >= seq {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                tracing::warn!(seq, last, "delivering out of order after waiting for a predecessor");
                return;
            }
        }
    }

    /// Marks `seq` of `group` delivered.
    pub fn done(&self, group: &[u8], seq: u64) {
        let mut map = self.delivered.lock().expect("order lock");
        let last = map.entry(group.to_vec()).or_insert(0);
        *last = (*last).max(seq);
        drop(map);
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn later_positions_wait_for_earlier_ones() {
        let order = Arc::new(Order::new(vec![(b"g".to_vec(), 4)]));
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for seq in [7u64, 6, 5] {
            let (order, log) = (order.clone(), log.clone());
            tasks.push(tokio::spawn(async move {
                order.wait_turn(b"g", seq).await;
                log.lock().unwrap().push(seq);
                order.done(b"g", seq);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*log.lock().unwrap(), vec![5, 6, 7]);
    }
}
