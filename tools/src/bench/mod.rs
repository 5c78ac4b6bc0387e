//! `syncline bench`: the benchmark matrix. Every combination of the compiled (and plugged-in)
//! transports and stores runs every workload, each run in its own process so that runs do not
//! disturb each other and each reports its own peak memory. See `docs/benchmarks.md`.

mod chart;
mod child;
mod report;
pub mod workloads;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

/// The workloads, in the order they run.
pub const WORKLOADS: [&str; 4] = ["one-way", "both-ways", "steady", "catch-up"];

/// Options of `syncline bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Runs to make: `transport/store[/workload]` patterns where `*` matches anything
    /// (`memory/memory`, `*/redb`, `websocket/*/one-way`); repeat or separate with commas.
    /// Default: everything (`--list` shows it).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Operations in each throughput workload (one-way, both-ways, catch-up).
    #[arg(long, default_value_t = 100_000)]
    pub ops: usize,
    /// Runs of each workload; the median (by ops/s) is reported, with every sample in --json.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Seconds of the steady workload.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Operations per second of the steady workload.
    #[arg(long, default_value_t = 1_000)]
    pub rate: u64,
    /// The Redis server for the Redis transport and store (`redis://host:port`); without it,
    /// a `redis-server` is started on a free loopback port for the run.
    #[arg(long)]
    pub redis: Option<String>,
    /// A plugin (shared library) whose store or transport joins the matrix; repeatable.
    #[arg(long = "plugin")]
    pub plugins: Vec<PathBuf>,
    /// Prints the results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Prints the results as Markdown tables.
    #[arg(long)]
    pub markdown: bool,
    /// Draws throughput and latency per combination into this SVG file.
    #[arg(long)]
    pub chart: Option<PathBuf>,
    /// Reports a matrix saved with `--json` instead of running one (with `--chart`,
    /// `--markdown` or neither).
    #[arg(long, value_name = "FILE")]
    pub from: Option<PathBuf>,
    /// This machine's limits (the JSON of `cargo run --release -p syncline-benches --example
    /// limits`): adds each combination's one-way rate as a fraction of its transport's and its
    /// store's limit.
    #[arg(long, value_name = "FILE")]
    pub limits: Option<PathBuf>,
    /// Lists the runs the options select, and exits.
    #[arg(long)]
    pub list: bool,
    /// Runs one `transport/store/workload` in this process (the matrix starts one process per
    /// run with this).
    #[arg(long, hide = true)]
    pub run: Option<String>,
}

/// One run: a transport, a store and a workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunId {
    /// Transport name (`memory`, `http`, `websocket`, `quic`, `redis`, or a plugin's scheme).
    pub transport: String,
    /// Store name (`memory`, `redb`, `redis`, or a plugin's name).
    pub store: String,
    /// One of [`WORKLOADS`].
    pub workload: String,
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.transport, self.store, self.workload)
    }
}

impl std::str::FromStr for RunId {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<RunId> {
        let parts: Vec<&str> = s.split('/').collect();
        let [t, st, w] = parts[..] else {
            bail!("{s:?} is not transport/store/workload");
        };
        if !WORKLOADS.contains(&w) {
            bail!(
                "unknown workload {w:?}; the workloads are {}",
                WORKLOADS.join(", ")
            );
        }
        Ok(RunId {
            transport: t.into(),
            store: st.into(),
            workload: w.into(),
        })
    }
}

/// What one run measured.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// Transport.
    pub transport: String,
    /// Store.
    pub store: String,
    /// Workload.
    pub workload: String,
    /// Operations synced.
    pub ops: usize,
    /// Wall time of the measured part.
    pub seconds: f64,
    /// Operations per second.
    pub ops_per_sec: f64,
    /// Median push-to-applied latency (one-way and steady).
    pub p50_us: Option<u64>,
    /// 99th percentile push-to-applied latency.
    pub p99_us: Option<u64>,
    /// Largest push-to-applied latency.
    pub max_us: Option<u64>,
    /// Sync frame bytes sent by both nodes per operation synced.
    pub frame_bytes_per_op: Option<f64>,
    /// Peak resident memory of the run's process (both nodes).
    pub peak_rss_bytes: Option<u64>,
    /// Why the run failed, if it did.
    pub error: Option<String>,
    /// Ops/s of every sample when the run was repeated (`--repeat`); the record is the median.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<f64>,
}

impl Record {
    fn failed(run: &RunId, error: String) -> Record {
        Record {
            transport: run.transport.clone(),
            store: run.store.clone(),
            workload: run.workload.clone(),
            ops: 0,
            seconds: 0.0,
            ops_per_sec: 0.0,
            p50_us: None,
            p99_us: None,
            max_us: None,
            frame_bytes_per_op: None,
            peak_rss_bytes: None,
            error: Some(error),
            samples: Vec::new(),
        }
    }
}

/// The machine a matrix ran on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model.
    pub cpu: String,
    /// Logical CPUs available.
    pub cpus: usize,
    /// Memory in bytes.
    pub memory_bytes: Option<u64>,
    /// Operating system and architecture.
    pub os: String,
    /// syncline's version.
    pub syncline: String,
}

/// A whole matrix: where and how it ran, and every run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Matrix {
    /// The machine.
    pub machine: Machine,
    /// The command line.
    pub command: String,
    /// Operations per throughput workload.
    pub ops: usize,
    /// Steady workload rate and seconds.
    pub steady: (u64, f64),
    /// Every run, in order.
    pub runs: Vec<Record>,
}

/// The transports and stores this binary (and the given plugins) can run.
fn dimensions(args: &BenchArgs) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let configs: Vec<_> = args
        .plugins
        .iter()
        .map(|p| syncline_node::config::PluginConfig { path: p.clone() })
        .collect();
    let loaded = syncline_node::plugins::Loaded::load(&configs)
        .map_err(|e| anyhow::anyhow!("{}", e.to_string().replace("plugins[", "--plugin [")))?;
    let backends = syncline_node::backends::NodeBackends::compiled()
        .with_plugins(&loaded)
        .backends;
    // The built-in ones first, in the order of the tables in docs/benchmarks.md.
    let order = |names: Vec<String>, first: &[&str]| {
        let mut v: Vec<String> = first
            .iter()
            .filter(|n| names.iter().any(|m| m == *n))
            .map(|n| (*n).to_owned())
            .collect();
        v.extend(names.into_iter().filter(|n| !first.contains(&n.as_str())));
        v
    };
    Ok((
        order(
            backends.transport_names(),
            &["memory", "http", "websocket", "quic", "redis"],
        ),
        order(backends.store_kinds(), &["memory", "redb", "redis"]),
    ))
}

fn patterns(only: &[String]) -> anyhow::Result<Option<GlobSet>> {
    if only.is_empty() {
        return Ok(None);
    }
    let mut set = GlobSetBuilder::new();
    for p in only {
        let segments = p.split('/').count();
        if p.is_empty() || segments > 3 {
            bail!("--only {p:?}: expected transport[/store[/workload]], such as memory/redb");
        }
        let full = format!("{p}{}", "/*".repeat(3 - segments));
        let glob = GlobBuilder::new(&full)
            .literal_separator(true)
            .build()
            .with_context(|| format!("--only {p:?} is not a valid pattern"))?;
        set.add(glob);
    }
    Ok(Some(set.build()?))
}

/// The runs `args` select, in order: by transport, then store, then workload.
pub fn select(args: &BenchArgs) -> anyhow::Result<Vec<RunId>> {
    let (transports, stores) = dimensions(args)?;
    let only = patterns(&args.only)?;
    let mut runs = Vec::new();
    for t in &transports {
        for s in &stores {
            for w in WORKLOADS {
                let run = RunId {
                    transport: t.clone(),
                    store: s.clone(),
                    workload: w.into(),
                };
                if only.as_ref().is_none_or(|g| g.is_match(run.to_string())) {
                    runs.push(run);
                }
            }
        }
    }
    if runs.is_empty() {
        bail!(
            "--only {} selects nothing; the transports here are {} and the stores {}",
            args.only.join(","),
            transports.join(", "),
            stores.join(", ")
        );
    }
    Ok(runs)
}

fn uses_redis(run: &RunId) -> bool {
    run.transport == "redis" || run.store == "redis"
}

/// A Redis server for the runs: the one given, or one started for the matrix.
enum Redis {
    Given(String),
    #[cfg(feature = "store-redis")]
    Started(syncline_store_redis::server::RedisServer),
    Missing(String),
}

impl Redis {
    fn for_runs(args: &BenchArgs, runs: &[RunId]) -> Option<Redis> {
        if !runs.iter().any(uses_redis) {
            return None;
        }
        if let Some(url) = &args.redis {
            return Some(Redis::Given(url.clone()));
        }
        #[cfg(feature = "store-redis")]
        return Some(match syncline_store_redis::server::RedisServer::start() {
            Ok(s) => Redis::Started(s),
            Err(e) => Redis::Missing(format!(
                "no Redis server: {}; pass --redis URL or leave Redis out with --only",
                e.message()
            )),
        });
        #[cfg(not(feature = "store-redis"))]
        Some(Redis::Missing(
            "no Redis server: pass --redis URL (this binary cannot start one without the \
             store-redis feature)"
                .into(),
        ))
    }

    fn url(&self) -> Result<String, String> {
        match self {
            Redis::Given(u) => Ok(u.clone()),
            #[cfg(feature = "store-redis")]
            Redis::Started(s) => Ok(s.url()),
            Redis::Missing(why) => Err(why.clone()),
        }
    }
}

/// Runs one run in a child process and reads its record.
fn spawn_run(args: &BenchArgs, run: &RunId, redis: Option<&str>) -> Record {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return Record::failed(run, format!("cannot find this executable: {e}")),
    };
    let mut cmd = Command::new(exe);
    cmd.args(["bench", "--run", &run.to_string()])
        .args(["--ops", &args.ops.to_string()])
        .args(["--duration", &args.duration.to_string()])
        .args(["--rate", &args.rate.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(url) = redis {
        cmd.args(["--redis", url]);
    }
    for p in &args.plugins {
        cmd.arg("--plugin").arg(p);
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Record::failed(run, format!("cannot start the run: {e}")),
    };
    // The workloads give up on their own after 10 minutes; this is the backstop.
    let limit = Duration::from_secs(900) + Duration::from_secs_f64(args.duration.max(0.0));
    let out = match wait_with_limit(child, limit) {
        Ok(o) => o,
        Err(e) => return Record::failed(run, e),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Record>(l).ok())
    {
        Some(r) if out.status.success() => r,
        _ => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let why = stderr
                .lines()
                .rev()
                .find(|l| l.starts_with("Error:"))
                .map(|l| l.trim_start_matches("Error:").trim().to_owned())
                .unwrap_or_else(|| {
                    let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
                    format!("the run exited with {}: {}", out.status, tail.join(" | "))
                });
            Record::failed(run, why)
        }
    }
}

/// The median sample (the first failure, if any failed), with every sample's rate: by rate, or
/// by 99th percentile latency for the steady workload (whose rate is fixed).
fn median(mut samples: Vec<Record>) -> Record {
    if let Some(i) = samples.iter().position(|r| r.error.is_some()) {
        return samples.swap_remove(i);
    }
    if samples.first().is_some_and(|r| r.workload == "steady") {
        samples.sort_by_key(|r| r.p99_us);
    } else {
        samples.sort_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
    }
    let rates: Vec<f64> = samples.iter().map(|r| r.ops_per_sec).collect();
    let mut m = samples.swap_remove(samples.len() / 2);
    if rates.len() > 1 {
        m.samples = rates;
    }
    m
}

fn wait_with_limit(
    mut child: std::process::Child,
    limit: Duration,
) -> Result<std::process::Output, String> {
    use std::io::Read;
    // Drain both pipes on threads so a chatty child never blocks on a full pipe.
    let mut so = child.stdout.take();
    let mut se = child.stderr.take();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(s) = so.as_mut() {
            let _ = s.read_to_end(&mut v);
        }
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(s) = se.as_mut() {
            let _ = s.read_to_end(&mut v);
        }
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the run took longer than {} s and was stopped",
                    limit.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for the run: {e}")),
        }
    };
    Ok(std::process::Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    })
}

fn progress(len: usize) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template("[{elapsed_precise}] [{bar:30}] {pos}/{len} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    // Runs take seconds each: keep the elapsed time moving.
    pb.enable_steady_tick(Duration::from_millis(250));
    pb
}

/// What each transport and store can do at best on this machine, in operations per second.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Limits {
    /// Records moved or stored per measurement.
    pub ops: usize,
    /// Bytes per record (an encoded operation).
    pub op_bytes: usize,
    /// By transport name.
    pub transports: std::collections::BTreeMap<String, f64>,
    /// By store name.
    pub stores: std::collections::BTreeMap<String, f64>,
}

/// Prints `matrix` as `args` ask, and draws its chart.
fn output(args: &BenchArgs, matrix: &Matrix) -> anyhow::Result<()> {
    let limits: Option<Limits> = match &args.limits {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            Some(serde_json::from_str(&text).with_context(|| {
                format!("{} is not the output of the limits example", file.display())
            })?)
        }
        None => None,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(matrix)?);
    } else if args.markdown {
        print!("{}", report::markdown(matrix));
        if let Some(l) = &limits {
            print!("\n{}", report::limits_markdown(matrix, l));
        }
    } else {
        print!("{}", report::table(matrix));
        if let Some(l) = &limits {
            print!("\n{}", report::limits_table(matrix, l));
        }
    }
    if let Some(path) = &args.chart {
        chart::draw(matrix, path)?;
        eprintln!("chart written to {}", path.display());
    }
    Ok(())
}

/// `syncline bench`.
pub async fn main(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(run) = &args.run {
        let run: RunId = run.parse()?;
        return child::run(&args, &run).await;
    }
    if args.ops == 0
        || args.rate == 0
        || args.repeat == 0
        || !args.duration.is_finite()
        || args.duration <= 0.0
    {
        bail!("--ops, --rate, --repeat and --duration must be positive");
    }
    if args.json && args.markdown {
        bail!("--json and --markdown exclude each other");
    }
    if let Some(file) = &args.from {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let matrix: Matrix = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a matrix saved with --json", file.display()))?;
        return output(&args, &matrix);
    }
    let runs = select(&args)?;
    if args.list {
        for r in &runs {
            println!("{r}");
        }
        return Ok(());
    }
    let redis = Redis::for_runs(&args, &runs);
    let pb = progress(runs.len());
    let mut records = Vec::with_capacity(runs.len());
    for run in &runs {
        pb.set_message(run.to_string());
        let redis_url = if uses_redis(run) {
            redis.as_ref().map(Redis::url)
        } else {
            None
        };
        let record = match redis_url {
            Some(Err(why)) => Record::failed(run, why),
            url => {
                let (args, run) = (args.clone(), run.clone());
                let url = url.and_then(Result::ok);
                tokio::task::spawn_blocking(move || {
                    let samples: Vec<Record> = (0..args.repeat)
                        .map(|_| spawn_run(&args, &run, url.as_deref()))
                        .collect();
                    median(samples)
                })
                .await?
            }
        };
        let line = report::one_line(&record);
        if pb.is_hidden() {
            eprintln!("[{}/{}] {line}", records.len() + 1, runs.len());
        } else {
            pb.println(line);
        }
        pb.inc(1);
        records.push(record);
    }
    pb.finish_and_clear();
    drop(redis);
    let matrix = Matrix {
        machine: report::machine(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        ops: args.ops,
        steady: (args.rate, args.duration),
        runs: records,
    };
    output(&args, &matrix)?;
    let failed = matrix.runs.iter().filter(|r| r.error.is_some()).count();
    if failed > 0 {
        bail!("{failed} of {} runs failed (see above)", matrix.runs.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn args(line: &[&str]) -> BenchArgs {
        Cli::parse_from(std::iter::once("bench").chain(line.iter().copied())).bench
    }

    fn names(line: &[&str]) -> Vec<String> {
        select(&args(line))
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    // The tests build the node with every backend (a dev-dependency with its default features).
    #[test]
    fn patterns_select_runs() {
        assert_eq!(
            names(&["--only", "memory/memory"]),
            [
                "memory/memory/one-way",
                "memory/memory/both-ways",
                "memory/memory/steady",
                "memory/memory/catch-up"
            ]
        );
        let redb = names(&["--only", "*/redb/one-way"]);
        assert!(
            redb.contains(&"websocket/redb/one-way".to_owned()),
            "{redb:?}"
        );
        assert!(redb.iter().all(|r| r.ends_with("/redb/one-way")));
        let two = names(&["--only", "http/memory/steady,quic/memory/steady"]);
        assert_eq!(two, ["http/memory/steady", "quic/memory/steady"]);
        // A transport alone means every store and workload.
        assert_eq!(names(&["--only", "websocket"]).len(), 4 * 3);
        let (transports, stores) = dimensions(&args(&[])).unwrap();
        assert_eq!(names(&[]).len(), transports.len() * stores.len() * 4);
    }

    #[test]
    fn bad_patterns_are_explained() {
        let e = select(&args(&["--only", "carrier-pigeon/memory"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("selects nothing") && e.contains("websocket"),
            "{e}"
        );
        let e = select(&args(&["--only", "a/b/c/d"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("transport[/store[/workload]]"), "{e}");
        let e = "memory/memory/sprint"
            .parse::<RunId>()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown workload") && e.contains("catch-up"),
            "{e}"
        );
    }
}
