//! This broker's lease with the controller, as the broker itself can know it.
//!
//! The controller fences a broker it has not heard from for `broker.session.timeout.ms`
//! and moves its leadership elsewhere. A broker cut off from the quorum keeps a stale
//! copy of metadata in which it still leads; left alone it would go on taking writes it
//! can never acknowledge and tell clients (Metadata) that it leads, so they never look
//! for the new leader. A heartbeat the controller acknowledged proves it heard from this
//! broker no earlier than the heartbeat was sent, so until the session timeout has
//! passed since then the controller cannot have fenced it; after that, the broker acts
//! as fenced (refuses to lead: NOT_LEADER_OR_FOLLOWER, LEADER_NOT_AVAILABLE) until a
//! heartbeat is acknowledged again.
//!
//! This module only keeps time; the heartbeat loop renews it and the handlers ask it.

use std::time::Duration;

use parking_lot::Mutex;
use strata_meta::MetaNode;
use tokio::time::Instant;

pub(crate) struct Lease {
    session: Duration,
    /// Until when the controller cannot have fenced this broker; `None` once it has.
    until: Mutex<Option<Instant>>,
}

impl Lease {
    /// A lease granted by a registration (or heartbeat) sent at `sent`.
    pub(crate) fn new(session: Duration, sent: Instant) -> Self {
        Self {
            session,
            until: Mutex::new(Some(sent + session)),
        }
    }

    /// The controller acknowledged a heartbeat or registration sent at `sent`.
    pub(crate) fn renewed(&self, sent: Instant) {
        let mut until = self.until.lock();
        let new = sent + self.session;
        if until.is_none_or(|u| u < new) {
            *until = Some(new);
        }
    }

    /// The controller said it fenced this broker.
    pub(crate) fn revoked(&self) {
        *self.until.lock() = None;
    }

    /// Whether the controller may have fenced this broker by now.
    pub(crate) fn lapsed(&self) -> bool {
        self.until.lock().is_none_or(|u| Instant::now() >= u)
    }

    /// Whether broker `me` must act as fenced: its lease lapsed and, in `meta`'s view,
    /// another broker is live (the controller never fences the last live broker).
    pub(crate) fn acts_fenced(&self, meta: &MetaNode, me: i32) -> bool {
        self.lapsed() && meta.read(|s| s.live_brokers().any(|b| b.node_id != me))
    }

    /// Resolves once broker `me` must act as fenced (see [`Lease::acts_fenced`]).
    pub(crate) async fn fenced(&self, meta: &MetaNode, me: i32) {
        loop {
            self.lapse().await;
            if self.acts_fenced(meta, me) {
                return;
            }
            // The last live broker: looked at again after a while, or once renewed.
            tokio::time::sleep(self.session / 4).await;
        }
    }

    /// Resolves once the lease has lapsed (at once if it has).
    pub(crate) async fn lapse(&self) {
        loop {
            let until = *self.until.lock();
            match until {
                Some(u) if Instant::now() < u => tokio::time::sleep_until(u).await,
                _ => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_lease_lapses_a_session_after_the_last_acknowledged_send() {
        let session = Duration::from_secs(3);
        let start = Instant::now();
        let lease = Lease::new(session, start);
        assert!(!lease.lapsed());

        tokio::time::advance(Duration::from_secs(2)).await;
        // A heartbeat sent at 1 s and acknowledged now moves the end to 4 s.
        lease.renewed(start + Duration::from_secs(1));
        // An older acknowledgement arriving late never shortens it.
        lease.renewed(start);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(!lease.lapsed(), "3.5 s: still within 1 s + 3 s");

        lease.lapse().await;
        assert_eq!(Instant::now(), start + Duration::from_secs(4));
        assert!(lease.lapsed());

        lease.renewed(Instant::now());
        assert!(!lease.lapsed());
        lease.revoked();
        assert!(lease.lapsed());
        lease.lapse().await; // at once
    }
}
