//! The command dispatcher (PROTOCOL §9, the sender's side): deliveries are
//! handed here, after the commit that recorded their command, each with
//! the instant it is due (`send_at = T − lead`, in the top's time); each
//! is published when the gateway's corrected clock reaches it. A timer
//! task of its own, so that a group commit in the ingest thread never
//! delays a send.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, QoS};
use tokio::sync::mpsc;
use tracing::warn;

use crate::ingest::{ParentClock, Scheduled};

/// Longest sleep with nothing due (the queue is re-read on every batch).
const IDLE: Duration = Duration::from_secs(3600);

/// Deliveries in time order; ties in the order they were handed over.
#[derive(Debug, Default)]
pub struct Queue {
    heap: BinaryHeap<Reverse<(i64, u64)>>,
    items: std::collections::HashMap<u64, Scheduled>,
    next: u64,
}

impl Queue {
    pub fn push(&mut self, s: Scheduled) {
        let n = self.next;
        self.next += 1;
        self.heap.push(Reverse((s.at_ms, n)));
        self.items.insert(n, s);
    }

    /// When the earliest is due.
    pub fn next_at(&self) -> Option<i64> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Every delivery due at `now_ms`, earliest first.
    pub fn due(&mut self, now_ms: i64) -> Vec<Scheduled> {
        let mut out = Vec::new();
        while let Some(Reverse((at, n))) = self.heap.peek().copied() {
            if at > now_ms {
                break;
            }
            self.heap.pop();
            if let Some(s) = self.items.remove(&n) {
                out.push(s);
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

/// Runs until the sending side closes: publishes every delivery at its
/// time (QoS 1).
pub async fn run(
    mut rx: mpsc::UnboundedReceiver<Vec<Scheduled>>,
    client: AsyncClient,
    clock: Arc<ParentClock>,
) {
    let mut queue = Queue::default();
    loop {
        let wait = queue.next_at().map_or(IDLE, |at| {
            Duration::from_millis(u64::try_from(at - clock.now_ms()).unwrap_or(0))
        });
        tokio::select! {
            batch = rx.recv() => match batch {
                Some(b) => b.into_iter().for_each(|s| queue.push(s)),
                None => return,
            },
            () = tokio::time::sleep(wait) => {
                for s in queue.due(clock.now_ms()) {
                    if let Err(e) = client.try_publish(s.topic, QoS::AtLeastOnce, false, s.payload) {
                        warn!(error = %e, "publish queue full; the delivery goes with the next resend");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn s(at_ms: i64, topic: &str) -> Scheduled {
        Scheduled {
            at_ms,
            topic: topic.into(),
            payload: Vec::new(),
        }
    }

    #[test]
    fn deliveries_leave_in_time_order_and_only_when_due() {
        let mut q = Queue::default();
        q.push(s(300, "c"));
        q.push(s(100, "a"));
        q.push(s(200, "b1"));
        q.push(s(200, "b2"));
        assert_eq!(q.next_at(), Some(100));
        assert!(q.due(99).is_empty());
        let first: Vec<String> = q.due(200).into_iter().map(|s| s.topic).collect();
        assert_eq!(first, ["a", "b1", "b2"]);
        assert_eq!(q.len(), 1);
        assert_eq!(q.due(1000).len(), 1);
        assert!(q.is_empty());
    }
}
