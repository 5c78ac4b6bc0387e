//! The in-process transport: `mem://name` links between reactors in one process.
//!
//! A [`MemoryNetwork`] is the shared medium. Every reactor gets its own [`MemoryTransport`]
//! from it (named, so that faults can target a direction), listens on `mem://<name>`, and dials
//! others. By default frames arrive exactly once and in order. With [`FaultConfig`] the network
//! drops, duplicates and delays (and so reorders) frames, decided by one seeded random generator
//! so that a simulation replays exactly; partitions cut a direction or both, and `heal` restores
//! them. A partitioned link stays open but silent, as a real network would, and new connections
//! across a partition are refused.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use syncline_core::protocol::Codec;
use syncline_core::{
    Acceptor, ChannelAcceptor, ChannelReceiver, Error, ErrorKind, FrameSender, Link, LinkInfo,
    Result, Transport,
};
use tokio::sync::mpsc;
use url::Url;

/// Probabilities and delays of injected faults, per frame.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FaultConfig {
    /// Probability that a frame is lost.
    pub drop: f64,
    /// Probability that a frame arrives twice.
    pub duplicate: f64,
    /// Probability that a frame is held back (and so overtaken by later frames).
    pub delay: f64,
    /// Longest hold-back.
    pub max_delay: Duration,
}

impl FaultConfig {
    /// No faults.
    pub fn none() -> Self {
        FaultConfig::default()
    }

    /// Whether any fault is enabled.
    pub fn any(&self) -> bool {
        self.drop > 0.0 || self.duplicate > 0.0 || (self.delay > 0.0 && !self.max_delay.is_zero())
    }
}

/// What the network did to frames so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Frames handed to the network.
    pub sent: u64,
    /// Frames lost to the drop probability.
    pub dropped: u64,
    /// Frames lost to a partition.
    pub partitioned: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
    /// Frames held back.
    pub delayed: u64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    dropped: AtomicU64,
    partitioned: AtomicU64,
    duplicated: AtomicU64,
    delayed: AtomicU64,
}

struct NetInner {
    listeners: Mutex<HashMap<String, (u64, mpsc::Sender<Link>)>>,
    next_listener: AtomicU64,
    faults: Mutex<FaultConfig>,
    /// Directions `(from, to)` that are cut.
    blocked: Mutex<HashSet<(String, String)>>,
    rng: Mutex<StdRng>,
    counters: Counters,
}

/// The shared medium of `mem://` links.
#[derive(Clone)]
pub struct MemoryNetwork(Arc<NetInner>);

impl fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryNetwork")
            .field("listeners", &self.0.listeners.lock().len())
            .field("faults", &*self.0.faults.lock())
            .finish()
    }
}

impl Default for MemoryNetwork {
    fn default() -> Self {
        MemoryNetwork::new()
    }
}

/// Fault decision for one frame.
enum Fate {
    Deliver,
    Drop,
    Partitioned,
    Duplicate,
    Delay(Duration),
}

impl MemoryNetwork {
    /// A network without faults.
    pub fn new() -> Self {
        MemoryNetwork::with_faults(0, FaultConfig::none())
    }

    /// A network injecting `faults`, decided by a generator seeded with `seed`.
    pub fn with_faults(seed: u64, faults: FaultConfig) -> Self {
        MemoryNetwork(Arc::new(NetInner {
            listeners: Mutex::new(HashMap::new()),
            next_listener: AtomicU64::new(1),
            faults: Mutex::new(faults),
            blocked: Mutex::new(HashSet::new()),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            counters: Counters::default(),
        }))
    }

    /// A transport for the reactor named `local`, sending binary frames.
    pub fn transport(&self, local: &str) -> Arc<MemoryTransport> {
        self.transport_with_codec(local, Codec::Binary)
    }

    /// A transport for the reactor named `local`, sending frames in `codec`.
    pub fn transport_with_codec(&self, local: &str, codec: Codec) -> Arc<MemoryTransport> {
        Arc::new(MemoryTransport {
            net: self.clone(),
            local: local.to_owned(),
            codec,
            duplex: true,
        })
    }

    /// Replaces the fault probabilities.
    pub fn set_faults(&self, faults: FaultConfig) {
        *self.0.faults.lock() = faults;
    }

    /// Cuts the direction `from -> to`.
    pub fn partition_one_way(&self, from: &str, to: &str) {
        self.0
            .blocked
            .lock()
            .insert((from.to_owned(), to.to_owned()));
    }

    /// Cuts both directions between `a` and `b`.
    pub fn partition(&self, a: &str, b: &str) {
        self.partition_one_way(a, b);
        self.partition_one_way(b, a);
    }

    /// Restores both directions between `a` and `b`.
    pub fn heal(&self, a: &str, b: &str) {
        let mut blocked = self.0.blocked.lock();
        blocked.remove(&(a.to_owned(), b.to_owned()));
        blocked.remove(&(b.to_owned(), a.to_owned()));
    }

    /// Restores every direction.
    pub fn heal_all(&self) {
        self.0.blocked.lock().clear();
    }

    /// What the network did so far.
    pub fn stats(&self) -> FaultStats {
        let c = &self.0.counters;
        FaultStats {
            sent: c.sent.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            partitioned: c.partitioned.load(Ordering::Relaxed),
            duplicated: c.duplicated.load(Ordering::Relaxed),
            delayed: c.delayed.load(Ordering::Relaxed),
        }
    }

    fn is_blocked(&self, from: &str, to: &str) -> bool {
        let blocked = self.0.blocked.lock();
        !blocked.is_empty() && blocked.contains(&(from.to_owned(), to.to_owned()))
    }

    fn fate(&self, from: &str, to: &str) -> Fate {
        self.0.counters.sent.fetch_add(1, Ordering::Relaxed);
        if self.is_blocked(from, to) {
            return Fate::Partitioned;
        }
        let f = *self.0.faults.lock();
        if !f.any() {
            return Fate::Deliver;
        }
        let mut rng = self.0.rng.lock();
        let roll: f64 = rng.random();
        if roll < f.drop {
            Fate::Drop
        } else if roll < f.drop + f.duplicate {
            Fate::Duplicate
        } else if roll < f.drop + f.duplicate + f.delay && !f.max_delay.is_zero() {
            let nanos = rng.random_range(0..=f.max_delay.as_nanos() as u64);
            Fate::Delay(Duration::from_nanos(nanos))
        } else {
            Fate::Deliver
        }
    }
}

/// The `mem://` transport of one reactor.
pub struct MemoryTransport {
    net: MemoryNetwork,
    local: String,
    codec: Codec,
    duplex: bool,
}

impl MemoryTransport {
    /// Links this transport dials behave like HTTP: the responder never calls or pokes the
    /// dialler (for comparing pull schedulers without pokes).
    pub fn non_duplex(self: Arc<Self>) -> Arc<Self> {
        Arc::new(MemoryTransport {
            net: self.net.clone(),
            local: self.local.clone(),
            codec: self.codec,
            duplex: false,
        })
    }
}

impl fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTransport")
            .field("local", &self.local)
            .finish()
    }
}

/// Frames in flight on one direction of a link; a sender beyond it waits, as it would on a
/// full socket.
const LINK_FRAMES: usize = 1024;
/// Links dialled but not yet accepted by a listener.
const PENDING_LINKS: usize = 64;

fn target_name(url: &Url) -> Result<String> {
    match url.host_str() {
        Some(h) if !h.is_empty() => Ok(h.to_owned()),
        _ => Err(Error::invalid(format!(
            "{url} names no endpoint; use mem://<name>"
        ))),
    }
}

struct MemSender {
    tx: Mutex<Option<mpsc::Sender<Result<Bytes>>>>,
    net: MemoryNetwork,
    from: String,
    to: String,
}

impl fmt::Debug for MemSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MemSender({} -> {})", self.from, self.to)
    }
}

#[async_trait]
impl FrameSender for MemSender {
    async fn send(&self, frame: Bytes) -> Result<()> {
        let Some(tx) = self.tx.lock().clone() else {
            return Err(Error::closed(format!(
                "the link to mem://{} is closed",
                self.to
            )));
        };
        if tx.is_closed() {
            return Err(Error::closed(format!("mem://{} closed the link", self.to)));
        }
        let c = &self.net.0.counters;
        match self.net.fate(&self.from, &self.to) {
            Fate::Deliver => {
                let _ = tx.send(Ok(frame)).await;
            }
            Fate::Drop => {
                c.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Fate::Partitioned => {
                c.partitioned.fetch_add(1, Ordering::Relaxed);
            }
            Fate::Duplicate => {
                c.duplicated.fetch_add(1, Ordering::Relaxed);
                let _ = tx.send(Ok(frame.clone())).await;
                let _ = tx.send(Ok(frame)).await;
            }
            Fate::Delay(d) => {
                c.delayed.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    let _ = tx.send(Ok(frame)).await;
                });
            }
        }
        Ok(())
    }

    fn close(&self) {
        self.tx.lock().take();
    }
}

fn link(
    net: &MemoryNetwork,
    from: &str,
    to: &str,
    tx: mpsc::Sender<Result<Bytes>>,
    rx: mpsc::Receiver<Result<Bytes>>,
    codec: Codec,
    duplex: bool,
) -> Link {
    Link {
        sender: Arc::new(MemSender {
            tx: Mutex::new(Some(tx)),
            net: net.clone(),
            from: from.to_owned(),
            to: to.to_owned(),
        }),
        receiver: Box::new(ChannelReceiver::new(rx, "mem")),
        info: LinkInfo {
            transport: "mem",
            peer: format!("mem://{to}"),
            duplex,
            codec,
        },
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    fn schemes(&self) -> Vec<&'static str> {
        vec!["mem"]
    }

    async fn connect(&self, url: &Url) -> Result<Link> {
        let target = target_name(url)?;
        if self.net.is_blocked(&self.local, &target) || self.net.is_blocked(&target, &self.local) {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!("{url} is unreachable from {} (partitioned)", self.local),
            ));
        }
        let accept = self
            .net
            .0
            .listeners
            .lock()
            .get(&target)
            .map(|(_, tx)| tx.clone())
            .ok_or_else(|| {
                Error::new(ErrorKind::Unavailable, format!("nothing listens on {url}"))
            })?;
        let (to_server, server_rx) = mpsc::channel(LINK_FRAMES);
        let (to_client, client_rx) = mpsc::channel(LINK_FRAMES);
        let server_side = link(
            &self.net,
            &target,
            &self.local,
            to_client,
            server_rx,
            self.codec,
            self.duplex,
        );
        accept
            .send(server_side)
            .await
            .map_err(|_| Error::new(ErrorKind::Unavailable, format!("{url} stopped listening")))?;
        Ok(link(
            &self.net,
            &self.local,
            &target,
            to_server,
            client_rx,
            self.codec,
            self.duplex,
        ))
    }

    async fn listen(&self, url: &Url) -> Result<Box<dyn Acceptor>> {
        let name = target_name(url)?;
        let mut listeners = self.net.0.listeners.lock();
        if listeners.get(&name).is_some_and(|(_, tx)| !tx.is_closed()) {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("{url} is already listened on"),
            ));
        }
        let (tx, rx) = mpsc::channel(PENDING_LINKS);
        let id = self.net.0.next_listener.fetch_add(1, Ordering::Relaxed);
        listeners.insert(name.clone(), (id, tx));
        let net = self.net.clone();
        Ok(Box::new(ChannelAcceptor::new(rx, url.clone()).on_drop(
            move || {
                let mut listeners = net.0.listeners.lock();
                // A newer listener under the same name is kept.
                if listeners.get(&name).is_some_and(|(i, _)| *i == id) {
                    listeners.remove(&name);
                }
            },
        )))
    }
}

/// The `mem://` network of this process: nodes assembled from [`register`] in one process
/// (embedded, or started by `syncline bench`) reach each other at `mem://<node id>`.
pub fn process_network() -> &'static MemoryNetwork {
    static NETWORK: std::sync::LazyLock<MemoryNetwork> =
        std::sync::LazyLock::new(MemoryNetwork::new);
    &NETWORK
}

/// Registers the memory transport (`[transports.memory]`, no settings) on this process's
/// network.
pub fn register(backends: &mut syncline_core::Backends) {
    backends.register_transport(syncline_core::TransportKind::plain(
        "memory",
        &["mem"],
        |node| Ok(process_network().transport(node.node_id.as_str())),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[tokio::test]
    async fn frames_flow_both_ways_and_close_ends_the_peer() {
        let net = MemoryNetwork::new();
        let a = net.transport("a");
        let b = net.transport("b");
        let mut acceptor = b.listen(&url("mem://b")).await.unwrap();
        let mut client = a.connect(&url("mem://b")).await.unwrap();
        let mut server = acceptor.accept().await.unwrap();
        client
            .sender
            .send(Bytes::from_static(b"ping"))
            .await
            .unwrap();
        assert_eq!(&server.receiver.recv().await.unwrap().unwrap()[..], b"ping");
        server
            .sender
            .send(Bytes::from_static(b"pong"))
            .await
            .unwrap();
        assert_eq!(&client.receiver.recv().await.unwrap().unwrap()[..], b"pong");
        client.sender.close();
        assert!(server.receiver.recv().await.is_none());
        assert!(a.connect(&url("mem://nobody")).await.is_err());
        assert!(b.listen(&url("mem://b")).await.is_err());
        drop(acceptor);
        let err = a.connect(&url("mem://b")).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        b.listen(&url("mem://b")).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn faults_are_seeded_and_partitions_cut_directions() {
        async fn run(seed: u64) -> (Vec<u8>, FaultStats) {
            let faults = FaultConfig {
                drop: 0.2,
                duplicate: 0.2,
                delay: 0.3,
                max_delay: Duration::from_millis(50),
            };
            let net = MemoryNetwork::with_faults(seed, faults);
            let a = net.transport("a");
            let b = net.transport("b");
            let mut acceptor = b.listen(&url("mem://b")).await.unwrap();
            let client = a.connect(&url("mem://b")).await.unwrap();
            let mut server = acceptor.accept().await.unwrap();
            for i in 0..100u8 {
                client.sender.send(Bytes::from(vec![i])).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            client.sender.close();
            let mut got = Vec::new();
            while let Some(f) = server.receiver.recv().await {
                got.push(f.unwrap()[0]);
            }
            (got, net.stats())
        }
        let (first, stats) = run(7).await;
        let (again, _) = run(7).await;
        assert_eq!(first, again, "the same seed gives the same fate");
        assert!(
            stats.dropped > 0 && stats.duplicated > 0 && stats.delayed > 0,
            "{stats:?}"
        );
        let mut sorted = first.clone();
        sorted.sort();
        assert_ne!(first, sorted, "delays reorder frames");

        let net = MemoryNetwork::new();
        let a = net.transport("a");
        let b = net.transport("b");
        let mut acceptor = b.listen(&url("mem://b")).await.unwrap();
        let mut client = a.connect(&url("mem://b")).await.unwrap();
        let mut server = acceptor.accept().await.unwrap();
        net.partition_one_way("a", "b");
        client
            .sender
            .send(Bytes::from_static(b"lost"))
            .await
            .unwrap();
        server
            .sender
            .send(Bytes::from_static(b"kept"))
            .await
            .unwrap();
        assert_eq!(&client.receiver.recv().await.unwrap().unwrap()[..], b"kept");
        assert!(a.connect(&url("mem://b")).await.is_err());
        net.heal("a", "b");
        client
            .sender
            .send(Bytes::from_static(b"back"))
            .await
            .unwrap();
        assert_eq!(&server.receiver.recv().await.unwrap().unwrap()[..], b"back");
        assert_eq!(net.stats().partitioned, 1);
    }
}
