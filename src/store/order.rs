//! Delivery in archive order: the stanzas of one group go out in the order
//! of their archive positions, although the positions are taken and
//! committed concurrently (in SQLite's batches, in PostgreSQL's
//! transactions). What a delivery waits for is what this process is still
//! doing for the group: positions it took and has not delivered yet, and
//! group transactions that may still take a lower position. Positions that
//! another instance on the same store took never hold a delivery back (the
//! client reads the archive for those; xep/ §Several Instances).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// How long a delivery waits for its predecessor (lost, e.g., with a
/// connection) before it goes out anyway; clients catch up from the archive.
const MAX_WAIT: Duration = Duration::from_secs(2);

#[derive(Default)]
pub struct Order {
    groups: Mutex<HashMap<Vec<u8>, Group>>,
    next_ticket: std::sync::atomic::AtomicU64,
    changed: Notify,
}

/// What this process has in flight for one group (gone when empty).
#[derive(Default)]
struct Group {
    /// Group transactions not yet committed or failed, by ticket.
    open: BTreeSet<u64>,
    /// Positions committed, not yet delivered, each with the first ticket
    /// handed out after it was committed: transactions from that ticket on
    /// can only take higher positions.
    pending: BTreeMap<u64, u64>,
}

impl Group {
    fn is_empty(&self) -> bool {
        self.open.is_empty() && self.pending.is_empty()
    }
}

/// A group transaction in flight: [`Taking::taken`] with the positions it
/// committed, or dropped if it took none.
pub struct Taking {
    order: Arc<Order>,
    group: Vec<u8>,
    ticket: u64,
}

impl Order {
    /// Marks a transaction on `group` begun (before it may take positions).
    pub fn taking(self: &Arc<Self>, group: &[u8]) -> Taking {
        let ticket = self.next_ticket.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.groups.lock().expect("order lock").entry(group.to_vec()).or_default().open.insert(ticket);
        Taking { order: self.clone(), group: group.to_vec(), ticket }
    }

    /// Waits until every position of `group` below `seq` that this process
    /// took went out, and every transaction that began before `seq` was
    /// committed ended (it may hold a lower position).
    pub async fn wait_turn(&self, group: &[u8], seq: u64) {
        let deadline = tokio::time::Instant::now() + MAX_WAIT;
        loop {
            let notified = self.changed.notified();
            if !self.held_back(group, seq) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                tracing::warn!(seq, "delivering out of order after waiting for a predecessor");
                return;
            }
        }
    }

    fn held_back(&self, group: &[u8], seq: u64) -> bool {
        let groups = self.groups.lock().expect("order lock");
        let Some(g) = groups.get(group) else { return false };
        let horizon = g.pending.get(&seq).copied().unwrap_or(0);
        g.pending.range(..seq).next().is_some() || g.open.range(..horizon).next().is_some()
    }

    /// Marks `seq` of `group` delivered.
    pub fn done(&self, group: &[u8], seq: u64) {
        self.update(group, |g| {
            g.pending.remove(&seq);
        });
    }

    fn update(&self, group: &[u8], f: impl FnOnce(&mut Group)) {
        let mut groups = self.groups.lock().expect("order lock");
        if let Some(g) = groups.get_mut(group) {
            f(g);
            if g.is_empty() {
                groups.remove(group);
            }
        }
        drop(groups);
        self.changed.notify_waiters();
    }
}

impl Taking {
    /// The transaction committed, taking `positions` (to be delivered).
    pub fn taken(self, positions: &[u64]) {
        let horizon = self.order.next_ticket.load(std::sync::atomic::Ordering::SeqCst);
        self.order.update(&self.group, |g| g.pending.extend(positions.iter().map(|p| (*p, horizon))));
    }
}

impl Drop for Taking {
    fn drop(&mut self) {
        let ticket = self.ticket;
        self.order.update(&self.group, |g| {
            g.open.remove(&ticket);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Delivers `seqs` of group "g" concurrently, in the given order of
    /// tasks; the order they went out in.
    async fn deliver(order: &Arc<Order>, seqs: &[u64]) -> Vec<u64> {
        let log = Arc::new(Mutex::new(Vec::new()));
        let tasks: Vec<_> = seqs
            .iter()
            .map(|&seq| {
                let (order, log) = (order.clone(), log.clone());
                tokio::spawn(async move {
                    order.wait_turn(b"g", seq).await;
                    log.lock().unwrap().push(seq);
                    order.done(b"g", seq);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let out = log.lock().unwrap().clone();
        out
    }

    #[tokio::test]
    async fn later_positions_wait_for_earlier_ones_of_this_process() {
        let order = Arc::new(Order::default());
        order.taking(b"g").taken(&[5, 6, 7]);
        assert_eq!(deliver(&order, &[7, 6, 5]).await, vec![5, 6, 7]);
        assert!(order.groups.lock().unwrap().is_empty(), "nothing kept once delivered");
    }

    #[tokio::test(start_paused = true)]
    async fn positions_of_other_instances_hold_nothing_back() {
        let order = Arc::new(Order::default());
        order.taking(b"g").taken(&[9]);
        let started = tokio::time::Instant::now();
        assert_eq!(deliver(&order, &[9]).await, vec![9], "1 to 8 were taken elsewhere");
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_position_waits_for_transactions_begun_before_it_was_taken() {
        let order = Arc::new(Order::default());
        let earlier = order.taking(b"g");
        let mine = order.taking(b"g");
        mine.taken(&[4]);
        let later = order.taking(b"g"); // can only take 5 or more
        let waiting = tokio::spawn({
            let order = order.clone();
            async move { order.wait_turn(b"g", 4).await }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!waiting.is_finished(), "the earlier transaction may still take 3");
        earlier.taken(&[3]);
        assert_eq!(deliver(&order, &[3]).await, vec![3]);
        waiting.await.unwrap();
        drop(later);
    }
}
