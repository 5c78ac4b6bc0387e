//! The deterministic simulation: 2–5 reactors in a line, star, mesh or cycle, random
//! submissions on all of them, a network that drops, duplicates, delays and partitions, and
//! reactors that crash and restart on a store that keeps what was committed, on duplex links
//! or HTTP-like ones, with a wall clock that may jump back across a restart. Some seeds add a
//! peer that forges origins, documents every peer refuses (so batches mix allowed and
//! forbidden operations), and operations large enough that batches must be cut in bytes.
//!
//! Everything runs on one thread under paused tokio time, and every random choice (the
//! timeline, the network's faults, the reactors' ids and jitter) derives from one seed, so a
//! failing seed replays exactly: `SYNCLINE_SIM_SEED=<seed> cargo test -p syncline-testkit
//! simulation`.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use syncline_core::queue::{JobKind, JobOutput};
use syncline_core::{
    Clock, DynStore, Filter, MemoryStore, NewAction, OpId, PeerRule, Reactor, RemoteConfig, Result,
    RetryPolicy, RulePermissions, StrandId, Submission, SyncMode, TokioClock,
};
use syncline_transport_memory::{FaultConfig, FaultStats, MemoryNetwork};

use crate::history::{History, Report, check};
use crate::{fast_config, read_all, start_custom};

/// How reactors are connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// r0 - r1 - r2 ...
    Line,
    /// r0 in the middle.
    Star,
    /// Everyone with everyone.
    Mesh,
    /// A ring.
    Cycle,
}

impl Topology {
    /// All four.
    pub const ALL: [Topology; 4] = [
        Topology::Line,
        Topology::Star,
        Topology::Mesh,
        Topology::Cycle,
    ];

    /// The undirected edges between `n` reactors.
    pub fn edges(self, n: usize) -> Vec<(usize, usize)> {
        match self {
            Topology::Line => (0..n.saturating_sub(1)).map(|i| (i, i + 1)).collect(),
            Topology::Star => (1..n).map(|i| (0, i)).collect(),
            Topology::Mesh => (0..n)
                .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
                .collect(),
            Topology::Cycle if n <= 2 => Topology::Line.edges(n),
            Topology::Cycle => (0..n).map(|i| (i, (i + 1) % n)).collect(),
        }
    }
}

/// Which store the reactors run on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SimStore {
    /// The in-memory store.
    #[default]
    Memory,
    /// A redb file per reactor (run inline, without fsync, to keep the run on one thread).
    Redb,
}

/// One simulation's parameters.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed everything derives from.
    pub seed: u64,
    /// Number of reactors (2–5).
    pub reactors: usize,
    /// How they are connected.
    pub topology: Topology,
    /// Per-frame faults while the run is active.
    pub faults: FaultConfig,
    /// Number of submissions.
    pub submissions: usize,
    /// Length of the active phase (virtual time).
    pub duration: Duration,
    /// Partition episodes.
    pub partitions: usize,
    /// Crash-and-restart episodes.
    pub crashes: usize,
    /// Largest wall-clock skew of a reactor, in ms either way.
    pub clock_skew_ms: i64,
    /// The store.
    pub store: SimStore,
    /// Reactors dial HTTP-like links: the responder never calls or pokes the dialler.
    pub non_duplex: bool,
    /// Every reactor refuses peers' writes (and reads) of `forbidden-*` documents, and a tenth
    /// of the submissions go there: mixed batches, per-operation refusals.
    pub forbidden: bool,
    /// Operations r0 injects claiming another reactor as their origin.
    pub forged: usize,
    /// Some actions carry 8–40 KiB, over a small frame limit.
    pub large: bool,
    /// Largest jump back of a restarted reactor's wall clock, in ms.
    pub restart_clock_back_ms: u64,
}

impl SimConfig {
    /// The parameters for a seed: topology and size cycle with the seed, faults always on.
    pub fn for_seed(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_5eed);
        SimConfig {
            seed,
            reactors: 2 + (seed as usize / 4) % 4,
            topology: Topology::ALL[seed as usize % 4],
            faults: FaultConfig {
                drop: rng.random_range(0.0..0.08),
                duplicate: rng.random_range(0.0..0.08),
                delay: rng.random_range(0.0..0.3),
                max_delay: Duration::from_millis(rng.random_range(1..200)),
            },
            submissions: 60,
            duration: Duration::from_secs(20),
            partitions: 3,
            crashes: 1 + (seed as usize % 2),
            clock_skew_ms: 5_000,
            store: SimStore::Memory,
            non_duplex: seed % 6 == 5,
            forbidden: seed % 5 == 1,
            forged: if seed % 3 == 1 { 3 } else { 0 },
            large: seed % 4 == 2,
            restart_clock_back_ms: 10_000,
        }
    }
}

/// What a run did.
#[derive(Debug)]
pub struct SimOutcome {
    /// The checker's findings.
    pub report: Report,
    /// What the network did.
    pub stats: FaultStats,
    /// Operations acknowledged to writers.
    pub acked: usize,
    /// Virtual time from healing to convergence.
    pub settle: Duration,
    /// A digest of the final state, equal for equal seeds.
    pub fingerprint: u64,
    /// Crashes that happened.
    pub crashes: usize,
}

impl SimOutcome {
    /// The command that replays this run.
    pub fn replay_hint(seed: u64) -> String {
        format!(
            "replay with: SYNCLINE_SIM_SEED={seed} cargo test -p syncline-testkit --test it simulation -- --nocapture"
        )
    }
}

fn name(i: usize) -> String {
    format!("r{i}")
}

fn sim_config(large: bool) -> syncline_core::ReactorConfig {
    let mut c = fast_config();
    if large {
        // 32 operations of up to 40 KiB would be ten times this frame: batches are cut.
        c.sync.max_frame_bytes = 128 << 10;
        c.sync.max_action_bytes = 48 << 10;
    }
    c.sync.push_batch_ops = 32;
    c.sync.pull_batch_ops = 32;
    c.sync.push_window = 3;
    c.sync.request_timeout = Duration::from_millis(800);
    c.sync.retry = RetryPolicy {
        initial_delay: Duration::from_millis(20),
        max_delay: Duration::from_secs(1),
        multiplier: 2.0,
        max_attempts: None,
    };
    c.snapshot_every = 8;
    c
}

struct World {
    net: MemoryNetwork,
    stores: Vec<DynStore>,
    clocks: Mutex<Vec<Arc<dyn Clock>>>,
    slots: Mutex<Vec<Option<Reactor>>>,
    seed: u64,
    cfg: SimConfig,
    /// What the clock check found at restarts.
    clocks_back: Mutex<Vec<String>>,
}

/// The prefix of documents every peer refuses in `forbidden` runs.
const FORBIDDEN: &str = "forbidden-";

/// The simulated wall clocks' epoch.
const EPOCH_MS: u64 = 1_700_000_000_000;

impl World {
    async fn boot(&self, i: usize, generation: u64) -> Result<Reactor> {
        let store = self.stores[i].clone();
        let mut config = sim_config(self.cfg.large);
        // A third of the runs carry pushes inside pulls, under the same faults.
        if self.seed.is_multiple_of(3) {
            config.sync.piggyback = syncline_core::sync::Piggyback::Always;
        }
        let clock = self.clocks.lock()[i].clone();
        let (non_duplex, forbidden) = (self.cfg.non_duplex, self.cfg.forbidden);
        let transport = self.net.transport(&name(i));
        start_custom(
            &self.net,
            &name(i),
            store,
            config,
            self.seed
                .wrapping_mul(1_000)
                .wrapping_add(i as u64 * 10 + generation),
            clock,
            move |mut b| {
                if non_duplex {
                    b = b.transport(transport.non_duplex());
                }
                if forbidden {
                    let docs = Filter::documents(["doc-*"]);
                    let rules = RulePermissions::new(vec![PeerRule {
                        peer: "*".into(),
                        token: None,
                        token_hash: None,
                        read: docs.clone(),
                        write: docs,
                    }])
                    .expect("valid rules");
                    b = b.permissions(Arc::new(rules));
                }
                b
            },
        )
        .await
    }

    fn get(&self, i: usize) -> Option<Reactor> {
        self.slots.lock()[i].clone()
    }
}

/// Adds the remotes of one edge; the variant decides who pushes and who pulls, so that
/// operations always flow both ways.
async fn connect(world: &World, a: usize, b: usize, variant: u32) -> Result<()> {
    let ra = world.get(a).expect("booted");
    let rb = world.get(b).expect("booted");
    let url = |i: usize| format!("mem://{}", name(i));
    let remote = |to: usize, tag: &str, mode| -> Result<RemoteConfig> {
        Ok(RemoteConfig::new(&format!("{}{tag}", name(to)), &url(to))?.with_mode(mode))
    };
    match variant {
        0 => {
            ra.sync()
                .add_remote(remote(b, "", SyncMode::PingPong)?)
                .await
        }
        1 => {
            rb.sync()
                .add_remote(remote(a, "", SyncMode::PingPong)?)
                .await
        }
        2 => {
            ra.sync().add_remote(remote(b, "", SyncMode::Push)?).await?;
            rb.sync().add_remote(remote(a, "", SyncMode::Push)?).await
        }
        3 => {
            ra.sync().add_remote(remote(b, "", SyncMode::Pull)?).await?;
            rb.sync().add_remote(remote(a, "", SyncMode::Pull)?).await
        }
        _ => {
            ra.sync()
                .add_remote(remote(b, "-push", SyncMode::Push)?)
                .await?;
            ra.sync()
                .add_remote(remote(b, "-pull", SyncMode::Pull)?)
                .await
        }
    }
}

fn random_submission(rng: &mut StdRng, local: bool, forbidden: bool, large: bool) -> Submission {
    let doc = if forbidden {
        format!("{FORBIDDEN}{}", rng.random_range(0..2))
    } else {
        format!("doc-{}", rng.random_range(0..6))
    };
    let scope = if local { "local" } else { "global" };
    let strand = StrandId::parse(&doc, Some(scope), None).expect("valid strand");
    let n = rng.random_range(1..=4);
    let actions = (0..n)
        .map(|_| {
            let key = ["a", "b", "c", "list"][rng.random_range(0..4)];
            let path = format!("/{key}");
            let (t, input) = match rng.random_range(0..4) {
                _ if large && rng.random_bool(0.2) => (
                    "set",
                    json!({"path": path, "value": "x".repeat(rng.random_range(8_000..40_000))}),
                ),
                0 => (
                    "set",
                    json!({"path": path, "value": rng.random_range(0..100)}),
                ),
                1 => (
                    "increment",
                    json!({"path": path, "by": rng.random_range(1..5)}),
                ),
                2 => (
                    "push",
                    json!({"path": path, "value": rng.random_range(0..100)}),
                ),
                _ => ("remove", json!({"path": path})),
            };
            NewAction::new(t, input).expect("valid action")
        })
        .collect();
    Submission::new(strand, actions)
}

async fn shared_ids(r: &Reactor) -> Result<BTreeSet<OpId>> {
    Ok(read_all(r.store())
        .await?
        .into_iter()
        .filter(|s| !s.op.scope.is_local() && !s.op.document_id.as_str().starts_with(FORBIDDEN))
        .map(|s| s.op.id)
        .collect())
}

async fn converged(world: &World, n: usize) -> Result<bool> {
    let mut sets = Vec::new();
    for i in 0..n {
        match world.get(i) {
            Some(r) => sets.push(shared_ids(&r).await?),
            None => return Ok(false),
        }
    }
    Ok(sets.windows(2).all(|w| w[0] == w[1]))
}

async fn open_stores(cfg: &SimConfig, dir: &std::path::Path) -> Result<Vec<DynStore>> {
    let mut out: Vec<DynStore> = Vec::new();
    for i in 0..cfg.reactors {
        out.push(match cfg.store {
            SimStore::Memory => Arc::new(MemoryStore::new()),
            SimStore::Redb => Arc::new(
                syncline_store_redb::RedbStore::open_with(
                    dir.join(format!("r{i}.redb")),
                    syncline_store_redb::RedbOptions {
                        blocking: syncline_store_redb::Blocking::Inline,
                        durable: false,
                    },
                )
                .await?,
            ),
        });
    }
    Ok(out)
}

async fn simulate(cfg: SimConfig) -> Result<SimOutcome> {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let dir = std::env::temp_dir().join(format!(
        "syncline-sim-{}-{}-{}",
        std::process::id(),
        cfg.seed,
        rng.random::<u32>()
    ));
    std::fs::create_dir_all(&dir)
        .map_err(|e| syncline_core::Error::internal(format!("creating {}: {e}", dir.display())))?;
    let stores = open_stores(&cfg, &dir).await?;
    let result = simulate_on(cfg, rng, stores).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn simulate_on(cfg: SimConfig, mut rng: StdRng, stores: Vec<DynStore>) -> Result<SimOutcome> {
    let n = cfg.reactors;
    let skews: Vec<i64> = (0..n)
        .map(|_| rng.random_range(-cfg.clock_skew_ms..=cfg.clock_skew_ms))
        .collect();
    let world = Arc::new(World {
        net: MemoryNetwork::with_faults(cfg.seed, cfg.faults),
        stores,
        clocks: Mutex::new(
            skews
                .iter()
                .map(|skew| Arc::new(TokioClock::new(EPOCH_MS, *skew)) as Arc<dyn Clock>)
                .collect(),
        ),
        slots: Mutex::new(vec![None; n]),
        seed: cfg.seed,
        cfg: cfg.clone(),
        clocks_back: Mutex::new(Vec::new()),
    });
    for i in 0..n {
        let r = world.boot(i, 0).await?;
        world.slots.lock()[i] = Some(r);
    }
    for (a, b) in cfg.topology.edges(n) {
        connect(&world, a, b, rng.random_range(0..5)).await?;
    }
    let history = Arc::new(History::new());
    let start = tokio::time::Instant::now();
    let mut timeline = Vec::new();
    for _ in 0..cfg.submissions {
        let at = start + cfg.duration.mul_f64(rng.random::<f64>());
        let i = rng.random_range(0..n);
        let local = rng.random_bool(0.05);
        let forbidden = cfg.forbidden && !local && rng.random_bool(0.1);
        let sub = random_submission(&mut rng, local, forbidden, cfg.large);
        let (world, history) = (world.clone(), history.clone());
        timeline.push(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let Some(r) = world.get(i) else {
                return;
            };
            if let Ok(written) = r.submit(sub).await {
                if forbidden {
                    history.record_confined(&name(i), &written);
                } else {
                    history.record(&name(i), &written, local);
                }
            }
        }));
    }
    // r0 forges: correctly hashed operations claiming another reactor as their origin, stored
    // as if received. Every reactor, the named one included, must end up with them.
    for k in 0..cfg.forged {
        let at = start + cfg.duration.mul_f64(rng.random::<f64>() * 0.8);
        let claimed = name(rng.random_range(1..n));
        let doc = format!("doc-{}", rng.random_range(0..6));
        let nonce: u64 = rng.random();
        let (world, history) = (world.clone(), history.clone());
        timeline.push(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let Some(r) = world.get(0) else {
                return;
            };
            let t = r.hlc().tick();
            let op = syncline_core::testing::op_at(&doc, nonce ^ k as u64, t.millis, &claimed);
            let id = op.id;
            let job = JobKind::Apply {
                ops: vec![Arc::new(op)],
                source: syncline_core::ReactorId::new("forger").expect("valid id"),
                meta: Vec::new(),
            };
            let Ok(ticket) = r
                .queue()
                .enqueue(syncline_core::JobId::from_random_bytes([k as u8; 16]), job)
                .await
            else {
                return;
            };
            if let Ok(JobOutput::Applied(_)) = ticket.wait().await {
                history.record_ids(&name(0), &[id]);
            }
        }));
    }
    let edges = cfg.topology.edges(n);
    for _ in 0..cfg.partitions {
        let at = start + cfg.duration.mul_f64(rng.random::<f64>() * 0.8);
        let (a, b) = edges[rng.random_range(0..edges.len())];
        let one_way = rng.random_bool(0.5);
        let length = Duration::from_millis(rng.random_range(200..3_000));
        let net = world.net.clone();
        timeline.push(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            if one_way {
                net.partition_one_way(&name(a), &name(b));
            } else {
                net.partition(&name(a), &name(b));
            }
            tokio::time::sleep(length).await;
            net.heal(&name(a), &name(b));
        }));
    }
    let crashes = Arc::new(Mutex::new(0usize));
    for generation in 1..=cfg.crashes as u64 {
        let at = start + cfg.duration.mul_f64(rng.random::<f64>() * 0.8);
        let i = rng.random_range(0..n);
        let down = Duration::from_millis(rng.random_range(100..2_000));
        let back_ms = rng.random_range(0..=cfg.restart_clock_back_ms);
        let skew = skews[i];
        let (world, crashes) = (world.clone(), crashes.clone());
        timeline.push(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let Some(r) = world.slots.lock()[i].take() else {
                return;
            };
            r.crash().await;
            *crashes.lock() += 1;
            tokio::time::sleep(down).await;
            // The wall clock comes back behind where it was (a machine whose clock was
            // corrected, or another machine): the HLC must still only move forward.
            let stored_max = world.stores[i]
                .heads()
                .await
                .ok()
                .and_then(|h| h.iter().map(|h| h.last.timestamp).max());
            let elapsed = start.elapsed().as_millis() as u64;
            world.clocks.lock()[i] = Arc::new(TokioClock::new(
                EPOCH_MS + elapsed - back_ms.min(elapsed),
                skew,
            ));
            match world.boot(i, generation).await {
                Ok(r) => {
                    let next = r.hlc().tick();
                    if let Some(max) = stored_max
                        && next <= max
                    {
                        world.clocks_back.lock().push(format!(
                            "{} restarted with its clock {back_ms} ms back and stamps {next}, \
                             not after {max}, the highest timestamp it stores",
                            name(i)
                        ));
                    }
                    world.slots.lock()[i] = Some(r)
                }
                Err(e) => panic!("restarting {} failed: {e}", name(i)),
            }
        }));
    }
    for t in timeline {
        if let Err(e) = t.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    world.net.heal_all();
    world.net.set_faults(FaultConfig::none());
    let healed = tokio::time::Instant::now();
    let deadline = healed + Duration::from_secs(300);
    while !converged(&world, n).await? && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let settle = healed.elapsed();
    // Let in-flight acknowledgements land so views are compared at rest.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let nodes: Vec<(String, Reactor)> = (0..n)
        .map(|i| {
            (
                name(i),
                world.get(i).expect("all reactors are up after the run"),
            )
        })
        .collect();
    let mut report = check(&history, &nodes).await?;
    report.clocks = std::mem::take(&mut *world.clocks_back.lock());
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (_, r) in &nodes {
        for s in read_all(r.store()).await? {
            (s.ordinal.0, s.op.id).hash(&mut h);
        }
    }
    let stats = world.net.stats();
    format!("{stats:?}").hash(&mut h);
    for (_, r) in &nodes {
        r.crash().await;
    }
    let crashes = *crashes.lock();
    Ok(SimOutcome {
        report,
        stats,
        acked: history.len(),
        settle,
        fingerprint: h.finish(),
        crashes,
    })
}

/// Runs one simulation on its own single-threaded runtime with paused time.
pub fn run(cfg: &SimConfig) -> Result<SimOutcome> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| syncline_core::Error::internal(format!("building a runtime failed: {e}")))?;
    rt.block_on(simulate(cfg.clone()))
}
