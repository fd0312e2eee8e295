//! The broker: the one path every room event takes to the connections in the room, on this
//! node and (scaled out) on every other node. The hub publishes; the broker hands each
//! publication to the node's `Subscribers`, which push it into the connections' outboxes.
//!
//! Modelled on centrifuge's `Broker`: the hub never pushes to a room's connections itself, so
//! a single node (`LocalBroker`) and a cluster share the hub's code.

mod local;
pub(crate) mod redis;
mod subscribers;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

pub use local::LocalBroker;
pub use subscribers::{Conns, RoomSubs, Subscribers};

/// A connection's id, unique within this process.
pub type ConnId = u64;

pub type SubscribeFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'static>>;

/// What a publication is, for ordering.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// A stored message: its id and the id stored before it in the room (`Stored::prev`).
    Message { id: u64, prev: u64 },
    /// `login` / `logout`: live state, no id.
    Presence,
}

/// One room event, encoded once for every recipient.
#[derive(Clone, Debug)]
pub struct Publication {
    /// The WebSocket frame every recipient is sent (a refcount, never a copy per recipient).
    pub frame: Bytes,
    pub kind: Kind,
    /// A connection of the publishing node that must not get it (a joiner gets its own
    /// `login`, with `recovered`).
    pub except: Option<ConnId>,
}

/// Members of the room on this node who did not get a publication: each of their
/// connections here refused it (they are closing). The publisher queues it for them.
pub type Missed = Vec<Arc<str>>;

/// The fan-out contract.
///
/// - Ordering: the publications of one room reach every connection in the order `publish`
///   was called for that room (the hub calls it in id order, see `hub`). Nothing is reordered
///   across kinds: a `logout` published after a message arrives after it.
/// - Delivery: each publication reaches each connection in the room once, except
///   `Publication::except`; a connection that refuses it (closing, over its limits) is the
///   connection's problem, never the room's: `publish` never waits for a reader.
/// - Synchronous engines deliver this node's connections within `publish` and return who
///   missed it, so the publisher queues for them before its ack. Engines that deliver later
///   (over the network) return an empty `Missed` and queue for the members they find missing.
/// - `subscribe` completes once publications of the room made after it will be delivered to
///   this node; the hub subscribes before it opens a room and unsubscribes when it drops it.
pub trait Broker: Send + Sync + 'static {
    /// Publishes `p` in `room`; `here` is this node's connections in it, locked by the
    /// caller (a synchronous engine delivers to them without looking the room up).
    fn publish(&self, room: &str, here: &Conns, p: &Publication) -> anyhow::Result<Missed>;
    fn subscribe(&self, room: &str) -> SubscribeFuture;
    fn unsubscribe(&self, room: &str);
}
