//! The `natter` binary: parses the command line and runs one subcommand.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use natter::cli::{Cli, Command, DumpArgs, LogFormat, RestoreArgs};
use natter::config::{Config, JwtKey};
use natter::store::sled_store::SledStore;
use natter::store::{Bounds, Store};
use natter::supervise::supervise;

/// Exit status of any command that fails (bad flags or files, a failed check, a server that
/// could not start); clap's own usage errors exit 2 as well.
const EXIT_FAILURE: i32 = 2;

/// mimalloc, not glibc's malloc: under small-room load the store's sled inserts and the
/// per-publish buffers made malloc and free about an eighth of the server's core (BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("NATTER_LOG").unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        // One JSON object per line, the message at the top level beside level and timestamp.
        LogFormat::Json => logs.json().flatten_event(true).with_ansi(false).init(),
    }
    let result = match cli.command {
        Command::Serve(args) => {
            // A reload (SIGHUP) that comes while the store opens, before the handler is in
            // place, must not kill the server: ignored until then (the certificate is read
            // fresh at start anyway). The handler registered later replaces this.
            // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
            unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
            args.to_config().and_then(serve)
        }
        Command::Check(args) => natter::check::run(&args).map(|ok| println!("{ok}")),
        Command::Token(t) => t.mint().map(|tok| println!("{tok}")),
        Command::Keys(k) => match &k.redis.redis {
            Some(url) => natter::inspect::keys_redis(url, &k.redis.redis_prefix, &k.pattern),
            None => open_for_inspection(&k.data).and_then(|s| natter::inspect::keys(&s, &k.pattern)),
        }
        .map(|names| print!("{}", natter::inspect::format_keys(&names))),
        Command::Get(g) => match &g.redis.redis {
            Some(url) => natter::inspect::get_redis(url, &g.redis.redis_prefix, &g.key),
            None => open_for_inspection(&g.data).and_then(|s| natter::inspect::get(&s, &g.key)),
        }
        .map(|v| print!("{v}")),
        Command::Dump(d) => dump(&d),
        Command::Restore(r) => restore(&r),
        Command::Bench(b) => natter::bench::run(*b),
    };
    if let Err(e) = result {
        // A log shipper reading JSON gets the reason as JSON too.
        match cli.log_format {
            LogFormat::Text => eprintln!("natter: {e:#}"),
            LogFormat::Json => tracing::error!("natter: {e:#}"),
        }
        std::process::exit(EXIT_FAILURE);
    }
}

fn bounds(cfg: Option<&Config>) -> Bounds {
    cfg.map(|c| c.limits.clone()).unwrap_or_default().store_bounds()
}

fn open_for_inspection(dir: &std::path::Path) -> anyhow::Result<SledStore> {
    if !dir.exists() {
        anyhow::bail!("--data: {} does not exist", dir.display());
    }
    SledStore::open(dir, bounds(None)).context("is the server still running? stop it first")
}

/// `natter dump`: to stdout, or to a new file that gets its name only once the dump is whole.
fn dump(args: &DumpArgs) -> anyhow::Result<()> {
    let store = match &args.redis {
        Some(_) => None,
        None => {
            if args.data.exists() && !args.data.join("db").exists() {
                anyhow::bail!("--data: {} holds no natter store", args.data.display());
            }
            Some(open_for_inspection(&args.data)?)
        }
    };
    let run = |out: &mut dyn std::io::Write, dest: &str| match (&store, &args.redis) {
        (Some(store), _) => natter::dump::dump(store, out, dest),
        (None, Some(url)) => natter::dump::dump_redis(url, &args.redis_prefix, out, dest),
        (None, None) => unreachable!("a store is opened without --redis"),
    };
    let sum = if args.out.as_os_str() == "-" {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        run(&mut out, "stdout")?
    } else {
        let out = &args.out;
        if out.exists() {
            anyhow::bail!("--out: {} exists: choose a new file", out.display());
        }
        let tmp = std::path::PathBuf::from(format!("{}.partial", out.display()));
        let file = std::fs::File::create_new(&tmp)
            .with_context(|| format!("--out: cannot create {} (is a dump under way?)", tmp.display()))?;
        let mut w = std::io::BufWriter::new(file);
        let dest = format!("--out {}", out.display());
        let written = run(&mut w, &dest).and_then(|sum| {
            w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            std::fs::rename(&tmp, out)?;
            Ok(sum)
        });
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.with_context(|| format!("--out: no dump written to {}", out.display()))?
    };
    let from = match &args.redis {
        // The URL may hold a password: not echoed.
        Some(_) => format!("Redis, prefix {:?}", args.redis_prefix),
        None => args.data.display().to_string(),
    };
    eprintln!(
        "natter dump: {} keys in {} lines from {from}{}",
        sum.keys,
        sum.lines,
        match sum.skipped {
            0 => String::new(),
            n => format!(" ({n} sled keys natter did not write left out)"),
        }
    );
    Ok(())
}

/// `natter restore`: the input is opened first, so a missing file creates no data dir.
fn restore(args: &RestoreArgs) -> anyhow::Result<()> {
    let (mut input, source): (Box<dyn std::io::BufRead>, String) = if args.input.as_os_str() == "-" {
        (Box::new(std::io::stdin().lock()), "stdin".into())
    } else {
        let f =
            std::fs::File::open(&args.input).with_context(|| format!("--in: cannot open {}", args.input.display()))?;
        (Box::new(std::io::BufReader::new(f)), format!("--in {}", args.input.display()))
    };
    if let Some(url) = &args.redis {
        let lines = natter::dump::restore_redis(url, &args.redis_prefix, bounds(None), &mut input, &source)?;
        // The URL may hold a password: not echoed.
        eprintln!("natter restore: {lines} lines from {source} into Redis, prefix {:?}", args.redis_prefix);
        return Ok(());
    }
    std::fs::create_dir_all(&args.data).with_context(|| format!("--data: cannot create {}", args.data.display()))?;
    let store = SledStore::open(&args.data, bounds(None))?;
    let lines = natter::dump::restore(&store, &args.data, &mut input, &source)?;
    drop(store);
    eprintln!("natter restore: {lines} lines from {source} into {}", args.data.display());
    Ok(())
}

fn serve(cfg: Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down");
            signals.cancel();
        });
        // Registered before the listening line, so a SIGHUP from then on never kills the process.
        let reload = Arc::new(tokio::sync::Notify::new());
        let mut hup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).context("SIGHUP handler")?;
        let notify = reload.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                notify.notify_one();
            }
        });
        run(cfg, shutdown, reload).await
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// `reload` fires on SIGHUP: the certificate and key are read again for new handshakes.
async fn run(cfg: Config, shutdown: CancellationToken, reload: Arc<tokio::sync::Notify>) -> anyhow::Result<()> {
    // Before anything opens files: connections are files too.
    let nofile = natter::admission::raise_open_file_limit();
    let tls = match &cfg.tls {
        Some(files) => {
            let certs = natter::tls::Certs::load(files)?;
            tokio::spawn(natter::tls::reload_on(certs.clone(), reload, shutdown.clone()));
            Some(tokio_rustls::TlsAcceptor::from(natter::tls::server_config(certs)?))
        }
        None => {
            let stop = shutdown.clone();
            tokio::spawn(async move {
                while tokio::select! { _ = reload.notified() => true, _ = stop.cancelled() => false } {
                    tracing::info!("reload: no --cert/--key, nothing to reload");
                }
            });
            None
        }
    };
    // Scaled out, the store is Redis and nothing is kept in --data.
    let store: Option<Arc<dyn Store>> = match &cfg.redis {
        Some(_) => None,
        None => {
            std::fs::create_dir_all(&cfg.data_dir)
                .with_context(|| format!("--data: cannot create {}", cfg.data_dir.display()))?;
            let store = Arc::new(SledStore::open(&cfg.data_dir, bounds(Some(&cfg)))?);
            store.clear_presence()?;
            Some(store)
        }
    };
    let verifier = natter::auth::Verifier::new(&cfg.jwt, cfg.public_rooms.clone(), cfg.limits.max_token_bytes)
        .map_err(|e| anyhow::anyhow!("--jwt-public-key: {e}"))?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("--listen: cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;

    let metrics = Arc::new(natter::metrics::Metrics::default());
    let admission = natter::admission::Admission::new(
        cfg.limits.max_connections,
        cfg.limits.max_connections_per_ip,
        cfg.trusted_proxies.clone(),
        nofile,
        metrics.clone(),
    );
    // The Redis broker outlives the sessions: their last presence events go out through it.
    let broker_stop = CancellationToken::new();
    let hub = match (&store, &cfg.redis) {
        (Some(store), _) => natter::hub::Hub::with_limits(
            store.clone(),
            metrics.clone(),
            cfg.limits.max_connections_per_uid,
            cfg.limits.max_rooms_per_uid,
        ),
        (None, Some(target)) => {
            natter::hub::Hub::on_redis(
                target,
                bounds(Some(&cfg)),
                metrics.clone(),
                cfg.limits.max_connections_per_uid,
                cfg.limits.max_rooms_per_uid,
                broker_stop.clone(),
            )
            .await?
        }
        (None, None) => unreachable!("a store is opened without --redis"),
    };
    let env =
        Arc::new(natter::session::Env { hub: hub.clone(), verifier: Arc::new(verifier), limits: cfg.limits.clone() });
    let dev_tokens = match (&cfg.jwt.key, cfg.dev) {
        (JwtKey::Secret(s), true) => Some(natter::http::DevTokens {
            secret: s.clone(),
            audience: cfg.jwt.audience.clone(),
            issuer: cfg.jwt.issuer.clone(),
            rooms_claim: cfg.jwt.rooms_claim.clone(),
        }),
        _ => None,
    };
    let app = Arc::new(natter::http::App {
        env,
        allowed_origins: cfg.allowed_origins.clone(),
        tls: tls.is_some(),
        page: natter::assets::Page::new(&natter::assets::PageSettings {
            dev: dev_tokens.is_some(),
            heartbeat_ms: cfg.heartbeat.as_millis() as u64,
        }),
        dev_tokens,
        shutdown: shutdown.clone(),
        sessions: tokio_util::task::TaskTracker::new(),
        admission,
        metrics_here: cfg.metrics_listen.is_none(),
    });
    if let Some(addr) = cfg.metrics_listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--metrics-listen: cannot listen on {addr}"))?;
        tracing::info!("metrics on http://{}/metrics", l.local_addr()?);
        tokio::spawn(natter::metrics_http::run(l, metrics.clone(), shutdown.clone()));
    }

    let flusher_stop = CancellationToken::new();
    let flusher = store.clone().map(|store| {
        let (commit, m, stop) = (hub.group_commit(), metrics.clone(), flusher_stop.clone());
        tokio::spawn(supervise("flusher", metrics.clone(), flusher_stop.clone(), move || {
            commit.clone().run(store.clone(), m.clone(), stop.clone())
        }))
    });
    let (h, beat, stop) = (hub.clone(), cfg.heartbeat, shutdown.clone());
    tokio::spawn(supervise("heartbeat", metrics.clone(), shutdown.clone(), move || {
        h.clone().heartbeat(beat, stop.clone())
    }));
    if hub.is_clustered() {
        // Until after `leave_node`, not the signal: the node stays live while it drains.
        let (h, stop) = (hub.clone(), broker_stop.clone());
        tokio::spawn(supervise("redis node", metrics.clone(), broker_stop.clone(), move || {
            h.clone().run_node(stop.clone())
        }));
    } else {
        let (h, stop) = (hub.clone(), shutdown.clone());
        tokio::spawn(supervise("housekeeping", metrics.clone(), shutdown.clone(), move || {
            h.clone().housekeeping(stop.clone())
        }));
    }

    if tls.is_none() {
        tracing::warn!(
            "no --cert/--key: serving plain ws:// (use TLS in production, or put natter behind a TLS proxy)"
        );
    }
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    println!("natter listening on {scheme}://{addr}");
    std::io::stdout().flush()?;

    let drained =
        natter::server::run(listener, app, tls, cfg.limits.handshake_timeout, shutdown, Duration::from_secs(7)).await;
    flusher_stop.cancel();
    if let Some(f) = flusher {
        let _ = f.await;
    }
    hub.leave_node().await;
    broker_stop.cancel();
    if let Some(store) = &store {
        store.flush().await.context("final store flush")?;
        // Every message is on disk and, when every session has ended, nothing is published any
        // more: ids may continue right after the last one.
        if drained {
            if let Err(e) = hub.release_ids() {
                tracing::warn!("releasing id reservations: {e:#}");
            }
            store.flush().await.context("final store flush")?;
        }
    }
    tracing::info!("stopped");
    Ok(())
}
