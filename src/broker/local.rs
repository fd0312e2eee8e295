//! The single-node broker: a publication goes straight to this node's subscribers, within the
//! `publish` call (so it is ordered by the caller's order of calls).

use std::sync::Arc;

use super::{Broker, Conns, Missed, Publication, SubscribeFuture, Subscribers};

pub struct LocalBroker {
    subs: Arc<Subscribers>,
}

impl LocalBroker {
    pub fn new(subs: Arc<Subscribers>) -> Self {
        LocalBroker { subs }
    }
}

impl Broker for LocalBroker {
    fn publish(&self, _room: &str, here: &Conns, p: &Publication) -> anyhow::Result<Missed> {
        Ok(here.deliver(p, self.subs.metrics()))
    }

    fn subscribe(&self, _room: &str) -> SubscribeFuture {
        Box::pin(std::future::ready(Ok(())))
    }

    fn unsubscribe(&self, _room: &str) {}
}
