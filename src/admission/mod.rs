//! Admission control: how many accepted sockets natter keeps open, in all and per client
//! address (a [`Ticket`] per socket, released on drop): serve, answer 503, or close at once.
//! Client addresses and `X-Forwarded-For` are in `addr.rs`, the open-file limit and accept
//! errors in `fds.rs`. See docs/security.md.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::header::HeaderMap;

use crate::metrics::Metrics;
use crate::sync::LockExt;

mod addr;
mod fds;

pub use addr::Cidr;
pub(crate) use addr::{client_key, forwarded_client};
pub use fds::{default_max_connections, raise_open_file_limit};
pub(crate) use fds::{AcceptErrors, ACCEPT_BACKOFF};

/// Sockets over `--max-connections` that still get their 503 (over TLS: a TLS handshake, then
/// the 503). Past these, a new socket is closed unread: the allowance is what a full server
/// spends on telling clients to come back, and it bounds that spending.
pub const REFUSAL_SLOTS: usize = 64;
/// The same allowance per client address, over `--max-connections-per-ip`: one address
/// flooding gets a few answers, then silence, and cannot use up [`REFUSAL_SLOTS`] alone.
pub const PER_IP_REFUSAL_SLOTS: usize = 8;
/// How long a refused socket may take to send its request (and do its TLS handshake): a
/// refusal slot must come free quickly, whatever the handshake limit.
pub const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);
/// `Retry-After` of a 503: long enough for slots to come free, short enough for a person.
pub const RETRY_AFTER_SECS: u32 = 5;

/// Which limit a socket is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    MaxConnections = 0,
    PerIp = 1,
}

impl Reason {
    pub const ALL: [Reason; 2] = [Reason::MaxConnections, Reason::PerIp];

    pub fn label(self) -> &'static str {
        match self {
            Reason::MaxConnections => "max_connections",
            Reason::PerIp => "per_ip",
        }
    }
}

/// Where a count stands against its limit and its refusal allowance.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tier {
    Serve,
    Refuse,
    Close,
}

fn tier(open_before: usize, limit: usize, refusals: usize) -> Tier {
    if open_before < limit {
        Tier::Serve
    } else if open_before < limit.saturating_add(refusals) {
        Tier::Refuse
    } else {
        Tier::Close
    }
}

/// The limits and the counts of open sockets: one for the whole server, one per client key.
pub struct Admission {
    max_connections: usize,
    max_per_ip: usize,
    trusted: Vec<Cidr>,
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    metrics: Arc<Metrics>,
}

impl Admission {
    /// `max_connections` None: [`default_max_connections`] of `nofile`.
    pub fn new(
        max_connections: Option<usize>,
        max_per_ip: usize,
        trusted: Vec<Cidr>,
        nofile: u64,
        metrics: Arc<Metrics>,
    ) -> Arc<Admission> {
        let max_connections = max_connections.unwrap_or_else(|| default_max_connections(nofile));
        let budget = default_max_connections(nofile);
        if max_connections > budget {
            tracing::warn!(
                "--max-connections {max_connections} is above what the open-file limit {nofile} leaves room for \
                 ({budget}): past that, accepts fail and back off instead of answering 503"
            );
        }
        tracing::info!(
            max_connections,
            max_connections_per_ip = max_per_ip,
            trusted_proxies = trusted.len(),
            "admission limits"
        );
        Arc::new(Admission {
            max_connections,
            max_per_ip,
            trusted,
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(ip))
    }

    /// The decision for a socket just accepted from `peer`: a ticket to serve it (possibly
    /// with a 503), or the reason to close it at once, unread. A trusted proxy's sockets are
    /// not counted by its own address: their clients are counted per request
    /// ([`Ticket::admit_request`]).
    pub(crate) fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Ticket, Reason> {
        let total = tier(self.open.fetch_add(1, Relaxed), self.max_connections, REFUSAL_SLOTS);
        if total == Tier::Close {
            self.open.fetch_sub(1, Relaxed);
            return Err(self.dropped(Reason::MaxConnections));
        }
        let trusted_peer = self.is_trusted(peer);
        let (ip, slot) = if trusted_peer {
            (Tier::Serve, None)
        } else {
            let key = client_key(peer);
            let mut map = self.per_ip.locked();
            let n = map.entry(key).or_insert(0);
            let ip = tier(*n, self.max_per_ip, PER_IP_REFUSAL_SLOTS);
            if ip == Tier::Close {
                drop(map);
                self.open.fetch_sub(1, Relaxed);
                return Err(self.dropped(Reason::PerIp));
            }
            *n += 1;
            (ip, Some(IpSlot { admission: self.clone(), key }))
        };
        // The address's own limit explains a refusal better than the server's.
        let refused = match (ip, total) {
            (Tier::Refuse, _) => Some(self.refused(Reason::PerIp)),
            (_, Tier::Refuse) => Some(self.refused(Reason::MaxConnections)),
            _ => None,
        };
        self.metrics.sockets.inc();
        Ok(Ticket {
            admission: self.clone(),
            peer,
            trusted_peer,
            refused,
            _peer_slot: slot,
            forwarded: Mutex::new(None),
        })
    }

    /// One more socket for a forwarded client, if it is under its limit (no refusal allowance:
    /// its request is already read, so a 503 costs nothing more).
    fn acquire_forwarded(self: &Arc<Self>, key: IpAddr) -> Option<IpSlot> {
        let mut map = self.per_ip.locked();
        let n = map.entry(key).or_insert(0);
        if *n >= self.max_per_ip {
            return None;
        }
        *n += 1;
        Some(IpSlot { admission: self.clone(), key })
    }

    fn release(&self, key: IpAddr) {
        let mut map = self.per_ip.locked();
        if let Some(n) = map.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&key);
            }
        }
    }

    fn refused(&self, reason: Reason) -> Reason {
        self.metrics.refused[reason as usize].inc();
        reason
    }

    fn dropped(&self, reason: Reason) -> Reason {
        self.metrics.dropped[reason as usize].inc();
        reason
    }
}

/// One socket counted under one client key; uncounted on drop.
struct IpSlot {
    admission: Arc<Admission>,
    key: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        self.admission.release(self.key);
    }
}

/// An accepted socket's place in the counts, held until the socket closes: by its connection
/// task, and by its session when it upgrades (the session outlives the HTTP connection).
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    peer: IpAddr,
    trusted_peer: bool,
    /// Over a limit at accept, within its allowance: every request is answered 503.
    refused: Option<Reason>,
    _peer_slot: Option<IpSlot>,
    /// A trusted proxy's connection: the slot of the client of its latest request.
    forwarded: Mutex<Option<IpSlot>>,
}

impl Ticket {
    /// The time a socket gets for its TLS handshake and request head: a refused one gets
    /// [`REFUSAL_TIMEOUT`] at most.
    pub(crate) fn handshake_limit(&self, handshake: Duration) -> Duration {
        match self.refused {
            Some(_) => handshake.min(REFUSAL_TIMEOUT),
            None => handshake,
        }
    }

    /// The TCP peer's address.
    pub(crate) fn peer(&self) -> IpAddr {
        self.peer
    }

    pub(crate) fn is_refused(&self) -> bool {
        self.refused.is_some()
    }

    /// Whether a request may be served: not when the socket was refused at accept, nor when
    /// it comes from a trusted proxy for a client over its limit. A proxy's connection counts
    /// for the client of its latest request.
    pub(crate) fn admit_request(&self, headers: &HeaderMap) -> Result<(), Reason> {
        if let Some(reason) = self.refused {
            return Err(reason);
        }
        if !self.trusted_peer {
            return Ok(());
        }
        let values = headers.get_all("x-forwarded-for").iter().map(|v| v.as_bytes());
        let client = forwarded_client(values, &self.admission.trusted).unwrap_or(self.peer);
        let key = client_key(client);
        let mut held = self.forwarded.locked();
        if held.as_ref().is_some_and(|s| s.key == key) {
            return Ok(());
        }
        // The previous client of this connection is done with it.
        *held = None;
        *held = self.admission.acquire_forwarded(key);
        match *held {
            Some(_) => Ok(()),
            None => Err(self.admission.refused(Reason::PerIp)),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.open.fetch_sub(1, Relaxed);
        self.admission.metrics.sockets.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn admission(max: usize, per_ip: usize, trusted: &[&str]) -> Arc<Admission> {
        let trusted = trusted.iter().map(|c| Cidr::parse(c).unwrap()).collect();
        Admission::new(Some(max), per_ip, trusted, 1 << 20, Arc::new(Metrics::default()))
    }

    #[test]
    fn per_ip_limit_refuses_then_closes_and_frees_on_drop() {
        let a = admission(1000, 2, &[]);
        let peer = ip("192.0.2.1");
        let served: Vec<Ticket> = (0..2).map(|_| a.admit(peer).unwrap()).collect();
        assert!(served.iter().all(|t| !t.is_refused()));
        let refused: Vec<Ticket> = (0..PER_IP_REFUSAL_SLOTS).map(|_| a.admit(peer).unwrap()).collect();
        assert!(refused.iter().all(|t| t.is_refused()));
        assert_eq!(refused[0].admit_request(&HeaderMap::new()), Err(Reason::PerIp));
        assert_eq!(a.admit(peer).err(), Some(Reason::PerIp), "past the allowance: closed unread");
        assert!(!a.admit(ip("192.0.2.2")).unwrap().is_refused(), "another address is served");
        assert_eq!(a.metrics.refused[Reason::PerIp as usize].get(), PER_IP_REFUSAL_SLOTS as u64);
        assert_eq!(a.metrics.dropped[Reason::PerIp as usize].get(), 1);
        drop(refused);
        drop(served);
        assert!(a.per_ip.locked().is_empty(), "entries go with their last socket");
        assert_eq!(a.open.load(Relaxed), 0);
        assert_eq!(a.metrics.sockets.get(), 0);
        assert!(!a.admit(peer).unwrap().is_refused());
    }

    #[test]
    fn total_limit_refuses_then_closes() {
        let a = admission(2, 1000, &[]);
        let held: Vec<Ticket> = (0..2 + REFUSAL_SLOTS).map(|i| a.admit(ip(&format!("192.0.2.{i}"))).unwrap()).collect();
        assert!(!held[1].is_refused() && held[2].is_refused());
        assert_eq!(held[2].refused, Some(Reason::MaxConnections));
        assert_eq!(a.admit(ip("198.51.100.1")).err(), Some(Reason::MaxConnections));
        assert_eq!(a.open.load(Relaxed), 2 + REFUSAL_SLOTS, "a closed socket is not counted");
    }

    fn with_xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", v.parse().unwrap());
        h
    }

    #[test]
    fn trusted_proxies_count_their_clients() {
        let a = admission(1000, 1, &["10.0.0.0/8"]);
        let proxy = ip("10.0.0.1");
        // The proxy's own sockets are not limited by its address.
        let t1 = a.admit(proxy).unwrap();
        let t2 = a.admit(proxy).unwrap();
        let t3 = a.admit(proxy).unwrap();
        assert!(!t1.is_refused() && !t2.is_refused() && !t3.is_refused());
        assert_eq!(t1.admit_request(&with_xff("198.51.100.1")), Ok(()));
        assert_eq!(t1.admit_request(&with_xff("198.51.100.1")), Ok(()), "the same client again on its socket");
        assert_eq!(t2.admit_request(&with_xff("198.51.100.1")), Err(Reason::PerIp));
        assert_eq!(t2.admit_request(&with_xff("198.51.100.2")), Ok(()));
        // The socket now serves another client: the first one's slot is free.
        assert_eq!(t1.admit_request(&with_xff("198.51.100.3")), Ok(()));
        assert_eq!(t3.admit_request(&with_xff("198.51.100.1")), Ok(()));
        // Without the header the proxy itself is the client.
        assert_eq!(t1.admit_request(&HeaderMap::new()), Ok(()));
        assert_eq!(t2.admit_request(&HeaderMap::new()), Err(Reason::PerIp));
        drop((t1, t2, t3));
        assert!(a.per_ip.locked().is_empty());
        // An untrusted peer's header is ignored: it is counted by its own address.
        let u1 = a.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(u1.admit_request(&with_xff("198.51.100.9")), Ok(()));
        let u2 = a.admit(ip("192.0.2.1")).unwrap();
        assert!(u2.is_refused());
        assert_eq!(u2.admit_request(&with_xff("198.51.100.10")), Err(Reason::PerIp));
    }
}
