//! `natter bench`: a load generator in the same binary, so one copied binary can load-test
//! another host. It speaks only what every room-broadcast server of the tutorial's family
//! understands, so the same run works against natter and the tutorial's Node.js server.

pub mod client;
pub mod connect;
pub mod fanout;
pub mod member;
pub mod offline;
pub mod payload;
pub mod report;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use client::Target;
use member::{Handler, Identity, Member};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Server URL: ws://HOST:PORT/PATH or wss://... Repeat it (or give a comma-separated list)
    /// for the nodes of a cluster: member i connects to the (i mod N)-th URL, so the members of
    /// one room sit on different nodes.
    #[arg(long, required = true, value_delimiter = ',')]
    pub url: Vec<String>,
    /// wss: accept any certificate (self-signed local servers).
    #[arg(long, conflicts_with = "ca")]
    pub insecure: bool,
    /// wss: CA certificate(s), PEM, to verify the server with.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// HS256 secret to mint one token per simulated user (sub = name = bN).
    #[arg(long, env = "NATTER_JWT_SECRET", hide_env_values = true, default_value = "secret")]
    pub secret: String,
    /// Use this token for every user instead of minting (one uid: mind the server's per-uid limit).
    #[arg(long)]
    pub token: Option<String>,
    /// Source addresses on loopback (127.0.0.1 .. 127.0.0.N), for more than ~28k connections.
    #[arg(long, default_value_t = 1)]
    pub sources: u8,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Print the report as JSON (before or after the scenario).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Subcommand, Debug)]
pub enum Scenario {
    /// R rooms x M members, all sending: closed loop, or open loop with --rate.
    Fanout(FanoutArgs),
    /// A low fixed rate in one room: end-to-end latency.
    Latency(LatencyArgs),
    /// N connections set up, then held idle (with --server-pid: server RSS per connection).
    Connect(ConnectArgs),
    /// Members offline, senders publishing with cid: acked writes/s, then the drain, checked.
    Offline(OfflineArgs),
}

#[derive(Args, Debug)]
pub struct ConnectArgs {
    #[arg(long, default_value_t = 1000)]
    pub connections: u32,
    /// Members per room.
    #[arg(long, default_value_t = 100)]
    pub room_size: u32,
    /// Seconds to hold the connections idle before measuring.
    #[arg(long, default_value_t = 5.0)]
    pub hold: f64,
    /// PID of a local server: its RSS is read before and after.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

#[derive(Args, Debug)]
pub struct OfflineArgs {
    #[arg(long, default_value_t = 10)]
    pub senders: u32,
    /// Members offline while the senders publish.
    #[arg(long, default_value_t = 90)]
    pub offline: u32,
    /// Messages per sender (each offline member gets senders x messages: mind the server's --offline-max).
    #[arg(long, default_value_t = 100)]
    pub messages: u32,
    #[arg(long, default_value_t = 100)]
    pub size: usize,
}

#[derive(Args, Debug)]
pub struct FanoutArgs {
    #[arg(long, default_value_t = 1)]
    pub rooms: u32,
    #[arg(long, default_value_t = 100)]
    pub members: u32,
    /// Message text size, bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Messages a second per sender (open loop); without it, closed loop.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Run several shapes, one after another, instead of --rooms x --members: ROOMSxMEMBERS,
    /// comma-separated (e.g. `500x2,200x5,1x100`); a summary table follows the reports.
    #[arg(long, value_delimiter = ',', value_parser = parse_shape, conflicts_with_all = ["rooms", "members"])]
    pub shapes: Vec<(u32, u32)>,
    /// Every message carries a `cid`, so the server acks each once it is flushed to disk; the
    /// report counts the acks (natter only: the tutorial server has no acks).
    #[arg(long)]
    pub cid: bool,
}

/// `ROOMSxMEMBERS`, both positive, at least 2 members.
fn parse_shape(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{s:?}: a shape is ROOMSxMEMBERS, e.g. 200x5 (at least 1 room of 2 members)");
    let (r, m) = s.trim().split_once(['x', 'X']).ok_or_else(bad)?;
    let (r, m) = (r.parse::<u32>().map_err(|_| bad())?, m.parse::<u32>().map_err(|_| bad())?);
    if r == 0 || m < 2 {
        return Err(bad());
    }
    Ok((r, m))
}

#[derive(Args, Debug)]
pub struct LatencyArgs {
    #[arg(long, default_value_t = 10)]
    pub members: u32,
    /// Messages a second per sender.
    #[arg(long, default_value_t = 5.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
}

/// What every scenario needs: where to connect, from where, and with which tokens.
pub struct Setup {
    /// Every `--url`, comma-separated, as the report shows it.
    pub url: String,
    /// A number of this run, in room names and cids, so that what an earlier run left on the
    /// server (queued messages, dedupe records) is not counted in this one.
    pub run: u32,
    /// One per `--url`, each with the loopback source addresses to spread over (or none).
    targets: Vec<(Target, Vec<IpAddr>)>,
    secret: Vec<u8>,
    token: Option<String>,
    concurrency: usize,
}

impl Setup {
    pub fn new(a: &BenchArgs) -> anyhow::Result<Setup> {
        anyhow::ensure!(a.url.iter().all(|u| !u.trim().is_empty()), "--url: an empty URL in the list");
        // One TLS config for every wss:// URL (the same trust, whichever node), made when the
        // first one needs it.
        let mut tls = None;
        let tls_for = |tls: &mut Option<tokio_rustls::TlsConnector>| -> anyhow::Result<tokio_rustls::TlsConnector> {
            if tls.is_none() {
                *tls = Some(tokio_rustls::TlsConnector::from(client::tls_config(a.ca.as_deref(), a.insecure)?));
            }
            Ok(tls.clone().expect("just set"))
        };
        let targets = a
            .url
            .iter()
            .map(|u| target_of(u.trim(), || tls_for(&mut tls), a.sources))
            .collect::<anyhow::Result<_>>()?;
        Ok(Setup {
            url: a.url.iter().map(|u| u.trim()).collect::<Vec<_>>().join(","),
            run: rand::random::<u32>() % 1_000_000,
            targets,
            secret: a.secret.as_bytes().to_vec(),
            token: a.token.clone(),
            concurrency: a.connect_concurrency.max(1),
        })
    }

    fn token_for(&self, index: u32) -> anyhow::Result<String> {
        match &self.token {
            Some(t) => Ok(t.clone()),
            None => {
                let name = member::name_of(index);
                // Every room: the bench's tokens work whatever the server's --public-rooms.
                let rooms = crate::access::RoomPatterns::any();
                let claims = crate::auth::MintClaims { name: Some(&name), rooms: Some(&rooms), ..Default::default() };
                crate::auth::mint(&self.secret, &name, &claims, Duration::from_secs(24 * 3600))
            }
        }
    }

    /// Connect and log in members 0..n (member i to room `room_of(i)`), `concurrency` at a time.
    pub async fn join_all(
        &self,
        n: u32,
        room_of: impl Fn(u32) -> String,
        handler: Arc<dyn Handler>,
    ) -> anyhow::Result<(Vec<Member>, Duration)> {
        self.join_range(0, n, room_of, handler).await
    }

    /// Connect and log in members `first..first + n`.
    pub async fn join_range(
        &self,
        first: u32,
        n: u32,
        room_of: impl Fn(u32) -> String,
        handler: Arc<dyn Handler>,
    ) -> anyhow::Result<(Vec<Member>, Duration)> {
        let start = Instant::now();
        let sem = Arc::new(tokio::sync::Semaphore::new(self.concurrency));
        let mut tasks = Vec::with_capacity(n as usize);
        for i in first..first + n {
            let id = Identity { index: i, token: self.token_for(i)?, room: room_of(i) };
            let (target, sources) = &self.targets[i as usize % self.targets.len()];
            let (target, source) = (target.clone(), (!sources.is_empty()).then(|| sources[i as usize % sources.len()]));
            let (sem, handler) = (sem.clone(), handler.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = sem.acquire_owned().await.expect("never closed");
                member::join(&target, source, id, handler, Duration::from_secs(30)).await
            }));
        }
        let mut members = Vec::with_capacity(n as usize);
        for (i, t) in tasks.into_iter().enumerate() {
            members.push(t.await?.with_context(|| format!("member {}", first as usize + i))?);
        }
        Ok((members, start.elapsed()))
    }
}

/// One `--url` resolved: address, Host header, path, TLS name; and, on IPv4 loopback with
/// `--sources` above 1, the source addresses 127.0.0.1 .. 127.0.0.N.
fn target_of(
    url: &str,
    connector: impl FnOnce() -> anyhow::Result<tokio_rustls::TlsConnector>,
    sources: u8,
) -> anyhow::Result<(Target, Vec<IpAddr>)> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("wss://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("ws://") {
        (false, r)
    } else {
        bail!("--url must start with ws:// or wss://");
    };
    let (hostport, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let with_port = if hostport.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        hostport.to_string()
    } else {
        format!("{hostport}:{}", if tls { 443 } else { 80 })
    };
    let addr = with_port
        .to_socket_addrs()
        .with_context(|| format!("--url: cannot resolve {with_port}"))?
        .next()
        .with_context(|| format!("--url: no address for {with_port}"))?;
    let tls = if tls {
        let connector = connector()?;
        let host = hostport.rsplit_once(':').map(|(h, _)| h).unwrap_or(hostport).trim_matches(['[', ']']);
        let name = rustls_pki_types::ServerName::try_from(host.to_string())
            .with_context(|| format!("--url: {host} is not a valid TLS server name"))?;
        Some((connector, name))
    } else {
        None
    };
    let sources = match addr {
        SocketAddr::V4(v4) if v4.ip().is_loopback() && sources > 1 => {
            (1..=sources).map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i))).collect()
        }
        _ => vec![],
    };
    Ok((Target { addr, host: hostport.to_string(), path, tls }, sources))
}

/// Run one scenario on a single-threaded runtime: the load generator gets one core, like the
/// server it measures, and its counters stay uncontended.
pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    let mut setup = Setup::new(&a)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let secs = |s: f64, flag: &str| {
        anyhow::ensure!(s.is_finite() && s >= 0.0, "{flag} must be a non-negative number of seconds");
        Ok(Duration::from_secs_f64(s))
    };
    let report = match &a.scenario {
        Scenario::Fanout(f) => {
            if let Some(r) = f.rate {
                anyhow::ensure!(r.is_finite() && r > 0.0, "--rate must be positive");
            }
            let o = fanout::Opts {
                rooms: f.rooms,
                members: f.members,
                size: f.size,
                warmup: secs(f.warmup, "--warmup")?,
                duration: secs(f.duration, "--duration")?,
                rate: f.rate,
                cid: f.cid,
            };
            if !f.shapes.is_empty() {
                let (mut reports, base) = (Vec::new(), setup.run);
                for (i, &(rooms, members)) in f.shapes.iter().enumerate() {
                    // Rooms of their own per shape: the last shape's members stay members there.
                    setup.run = base.wrapping_add(i as u32 * 7_919);
                    let o = fanout::Opts { rooms, members, ..o.clone() };
                    reports.push(rt.block_on(fanout::run(&setup, o))?);
                }
                report::print_matrix(&f.shapes, &reports, a.json);
                return Ok(());
            }
            rt.block_on(fanout::run(&setup, o))?
        }
        Scenario::Latency(l) => {
            anyhow::ensure!(l.rate.is_finite() && l.rate > 0.0, "--rate must be positive");
            let o = fanout::Opts {
                rooms: 1,
                members: l.members,
                size: l.size,
                warmup: secs(l.warmup, "--warmup")?,
                duration: secs(l.duration, "--duration")?,
                rate: Some(l.rate),
                cid: false,
            };
            let mut r = rt.block_on(fanout::run(&setup, o))?;
            r.scenario = format!("latency: {} members, {}/s per sender", l.members, l.rate);
            r
        }
        Scenario::Connect(c) => rt.block_on(connect::run(
            &setup,
            connect::Opts {
                connections: c.connections,
                room_size: c.room_size,
                hold: secs(c.hold, "--hold")?,
                server_pid: c.server_pid,
            },
        ))?,
        Scenario::Offline(f) => rt.block_on(offline::run(
            &setup,
            offline::Opts { senders: f.senders, offline: f.offline, messages: f.messages, size: f.size },
        ))?,
    };
    report.print(a.json);
    Ok(())
}
