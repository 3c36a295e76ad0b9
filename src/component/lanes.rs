//! Per-sender lanes (xep/ §Order): the stanzas of one full JID are handled
//! one after the other, in the order the server delivered them, while those
//! of different senders run in parallel. A lane exists only while its
//! sender has stanzas queued or in hand; every queued stanza holds one of
//! the session's in-flight permits, so the lanes together hold at most
//! `limits.max_in_flight` stanzas.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};

use minidom::Element;
use tokio::sync::OwnedSemaphorePermit;

type Queued = (Element, OwnedSemaphorePermit);

pub struct Lanes<H> {
    /// The stanzas waiting behind the one in hand, per sender with a lane.
    queues: Mutex<HashMap<String, VecDeque<Queued>>>,
    handle: H,
}

impl<H, F> Lanes<H>
where
    H: Fn(Element) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    pub fn new(handle: H) -> Arc<Self> {
        Arc::new(Lanes { queues: Mutex::new(HashMap::new()), handle })
    }

    /// Queues `stanza` behind its sender's earlier ones, starting a lane if
    /// the sender has none.
    pub fn push(self: &Arc<Self>, stanza: Element, permit: OwnedSemaphorePermit) {
        let sender = stanza.attr("from").unwrap_or_default().to_owned();
        let mut queues = self.queues.lock().expect("lanes lock");
        if let Some(queue) = queues.get_mut(&sender) {
            queue.push_back((stanza, permit));
            return;
        }
        queues.insert(sender.clone(), VecDeque::new());
        drop(queues);
        tokio::spawn(self.clone().run(sender, (stanza, permit)));
    }

    /// Handles the sender's stanzas in order until its queue is empty, then
    /// drops the lane (under the lock [`Self::push`] takes, so nothing
    /// queued is left behind).
    async fn run(self: Arc<Self>, sender: String, first: Queued) {
        let mut next = Some(first);
        while let Some((stanza, permit)) = next {
            (self.handle)(stanza).await;
            next = self.next_of(&sender);
            drop(permit);
        }
    }

    fn next_of(&self, sender: &str) -> Option<Queued> {
        let mut queues = self.queues.lock().expect("lanes lock");
        let next = queues.get_mut(sender).and_then(VecDeque::pop_front);
        if next.is_none() {
            queues.remove(sender);
        }
        next
    }

    /// Senders with a lane.
    #[cfg(test)]
    fn active(&self) -> usize {
        self.queues.lock().expect("lanes lock").len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::Semaphore;

    use super::*;

    fn stanza(from: &str, n: u64) -> Element {
        Element::builder("message", "jabber:client")
            .attr("from".try_into().unwrap(), from)
            .attr("id".try_into().unwrap(), n.to_string())
            .build()
    }

    /// A sender's later stanza, though quicker to handle, waits for its
    /// earlier one; another sender's does not, and idle lanes go away.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_senders_stanzas_keep_their_order_others_run_alongside() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let logged = log.clone();
        let lanes = Lanes::new(move |s: Element| {
            let log = logged.clone();
            async move {
                let n: u64 = s.attr("id").unwrap().parse().unwrap();
                tokio::time::sleep(Duration::from_millis(if n == 1 { 200 } else { 1 })).await;
                log.lock().unwrap().push((s.attr("from").unwrap().to_owned(), n));
            }
        });
        let permits = Arc::new(Semaphore::new(8));
        for (from, n) in [("a@x/1", 1), ("a@x/1", 2), ("a@x/1", 3), ("b@x/1", 4)] {
            lanes.push(stanza(from, n), permits.clone().acquire_owned().await.unwrap());
        }
        let _all = permits.acquire_many(8).await.unwrap();
        let log = log.lock().unwrap().clone();
        assert_eq!(log, [("b@x/1".into(), 4), ("a@x/1".into(), 1), ("a@x/1".into(), 2), ("a@x/1".into(), 3)]);
        assert_eq!(lanes.active(), 0);
    }
}
