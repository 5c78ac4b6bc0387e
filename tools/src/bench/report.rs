//! The matrix as text: one line per run while it runs, then a table per combination (plain or
//! Markdown), and the machine it ran on.

use std::fmt::Write as _;

use super::{Limits, Machine, Matrix, Record, WORKLOADS};

/// `612k`, `1.2M`, `950`.
pub(crate) fn rate(ops_per_sec: f64) -> String {
    if ops_per_sec >= 1e6 {
        format!("{:.2}M", ops_per_sec / 1e6)
    } else if ops_per_sec >= 1e3 {
        format!("{:.0}k", ops_per_sec / 1e3)
    } else {
        format!("{ops_per_sec:.0}")
    }
}

/// `230 µs`, `4.7 ms`, `1.20 s`.
pub(crate) fn micros(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.2} s", us as f64 / 1e6)
    } else if us >= 10_000 {
        format!("{:.0} ms", us as f64 / 1e3)
    } else if us >= 1_000 {
        format!("{:.1} ms", us as f64 / 1e3)
    } else {
        format!("{us} µs")
    }
}

/// `42%`, `4.6%`, `0.37%`.
pub(crate) fn percent(fraction: f64) -> String {
    let p = 100.0 * fraction;
    if p >= 10.0 {
        format!("{p:.0}%")
    } else if p >= 1.0 {
        format!("{p:.1}%")
    } else {
        format!("{p:.2}%")
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn latency(r: &Record) -> String {
    match (r.p50_us, r.p99_us) {
        (Some(a), Some(b)) => format!("{} / {}", micros(a), micros(b)),
        _ => "-".into(),
    }
}

/// One run, as a progress line.
pub(crate) fn one_line(r: &Record) -> String {
    let name = format!("{}/{}/{}", r.transport, r.store, r.workload);
    match &r.error {
        Some(e) => format!("{name}: FAILED: {e}"),
        None => {
            let mut s = format!("{name}: {} ops/s", rate(r.ops_per_sec));
            if r.p99_us.is_some() {
                let _ = write!(s, ", p50 / p99 {}", latency(r));
            }
            if r.samples.len() > 1 && r.workload != "steady" {
                let all: Vec<String> = r.samples.iter().map(|v| rate(*v)).collect();
                let _ = write!(s, " (median of {})", all.join(", "));
            }
            s
        }
    }
}

/// A combination's runs by workload.
pub(crate) struct Row<'a> {
    pub(crate) transport: &'a str,
    pub(crate) store: &'a str,
    pub(crate) runs: [Option<&'a Record>; 4],
}

impl Row<'_> {
    pub(crate) fn get(&self, workload: &str) -> Option<&Record> {
        let i = WORKLOADS.iter().position(|w| *w == workload)?;
        self.runs[i].filter(|r| r.error.is_none())
    }
}

/// The combinations of `m`, in run order.
pub(crate) fn rows(m: &Matrix) -> Vec<Row<'_>> {
    let mut rows: Vec<Row<'_>> = Vec::new();
    for r in &m.runs {
        let i = match rows
            .iter()
            .position(|x| x.transport == r.transport && x.store == r.store)
        {
            Some(i) => i,
            None => {
                rows.push(Row {
                    transport: &r.transport,
                    store: &r.store,
                    runs: [None; 4],
                });
                rows.len() - 1
            }
        };
        if let Some(w) = WORKLOADS.iter().position(|w| *w == r.workload) {
            rows[i].runs[w] = Some(r);
        }
    }
    rows
}

const HEADERS: [&str; 9] = [
    "transport",
    "store",
    "one-way ops/s",
    "burst p50 / p99",
    "both-ways ops/s",
    "steady p50 / p99",
    "catch-up ops/s",
    "bytes/op",
    "peak RSS",
];

fn cells(row: &Row<'_>) -> [String; 9] {
    let ops = |w: &str| {
        let i = WORKLOADS.iter().position(|x| *x == w).unwrap_or(0);
        match row.runs[i] {
            None => "-".to_owned(),
            Some(r) if r.error.is_some() => "failed".to_owned(),
            Some(r) => rate(r.ops_per_sec),
        }
    };
    let lat = |w: &str| row.get(w).map_or("-".to_owned(), latency);
    let bytes = row
        .get("one-way")
        .or_else(|| row.get("both-ways"))
        .and_then(|r| r.frame_bytes_per_op)
        .map_or("-".to_owned(), |b| format!("{b:.0} B"));
    let rss = row
        .runs
        .iter()
        .flatten()
        .filter_map(|r| r.peak_rss_bytes)
        .max()
        .map_or("-".to_owned(), mib);
    [
        row.transport.to_owned(),
        row.store.to_owned(),
        ops("one-way"),
        lat("one-way"),
        ops("both-ways"),
        lat("steady"),
        ops("catch-up"),
        bytes,
        rss,
    ]
}

fn failures(m: &Matrix) -> String {
    let mut s = String::new();
    for r in m.runs.iter().filter(|r| r.error.is_some()) {
        let _ = writeln!(s, "{}", one_line(r));
    }
    s
}

fn describe(m: &Matrix) -> String {
    format!(
        "{} ops per throughput workload; steady: {} ops/s for {} s; {}",
        m.ops,
        m.steady.0,
        m.steady.1,
        machine_line(&m.machine)
    )
}

/// An aligned text table; the first two columns are left-aligned, numbers right-aligned.
fn text_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            let pad = " ".repeat(w - c.chars().count());
            if i < 2 {
                let _ = write!(s, "{c}{pad}  ");
            } else {
                let _ = write!(s, "{pad}{c}  ");
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(&headers.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    for r in rows {
        out += &line(r);
    }
    out
}

/// A Markdown table; numbers right-aligned.
fn markdown_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!("| {} |\n|", headers.join(" | "));
    for i in 0..headers.len() {
        out += if i < 2 { "---|" } else { "---:|" };
    }
    out += "\n";
    for r in rows {
        out += &format!("| {} |\n", r.join(" | "));
    }
    out
}

fn matrix_rows(m: &Matrix) -> Vec<Vec<String>> {
    rows(m).iter().map(|r| cells(r).to_vec()).collect()
}

/// The matrix as an aligned text table.
pub(crate) fn table(m: &Matrix) -> String {
    let mut out = text_table(&HEADERS, &matrix_rows(m));
    let _ = writeln!(out, "\n{}", describe(m));
    out += &failures(m);
    out
}

/// The matrix as a Markdown table.
pub(crate) fn markdown(m: &Matrix) -> String {
    let mut out = markdown_table(&HEADERS, &matrix_rows(m));
    let _ = writeln!(out, "\n{}", describe(m));
    let f = failures(m);
    if !f.is_empty() {
        let _ = writeln!(out, "\nFailed runs:\n\n```\n{f}```");
    }
    out
}

const LIMIT_HEADERS: [&str; 7] = [
    "transport",
    "store",
    "one-way ops/s",
    "transport limit",
    "of transport",
    "store limit",
    "of store",
];

fn limit_rows(m: &Matrix, l: &Limits) -> Vec<Vec<String>> {
    let pct = |v: f64, of: Option<&f64>| match of {
        Some(&of) if of > 0.0 => percent(v / of),
        _ => "-".to_owned(),
    };
    let lim = |of: Option<&f64>| of.map_or("-".to_owned(), |v| rate(*v));
    rows(m)
        .iter()
        .filter_map(|r| {
            let v = r.get("one-way")?.ops_per_sec;
            let (t, s) = (l.transports.get(r.transport), l.stores.get(r.store));
            Some(vec![
                r.transport.to_owned(),
                r.store.to_owned(),
                rate(v),
                lim(t),
                pct(v, t),
                lim(s),
                pct(v, s),
            ])
        })
        .collect()
}

fn limits_note(l: &Limits) -> String {
    format!(
        "Limits: {} records of {} bytes (an encoded operation) in batches of 1,024, moved or \
         stored without syncline (`cargo run --release -p syncline-benches --example limits`).\n",
        l.ops, l.op_bytes
    )
}

/// The one-way rate of each combination against this machine's limits, as text.
pub(crate) fn limits_table(m: &Matrix, l: &Limits) -> String {
    text_table(&LIMIT_HEADERS, &limit_rows(m, l)) + "\n" + &limits_note(l)
}

/// The one-way rate of each combination against this machine's limits, in Markdown.
pub(crate) fn limits_markdown(m: &Matrix, l: &Limits) -> String {
    markdown_table(&LIMIT_HEADERS, &limit_rows(m, l)) + "\n" + &limits_note(l)
}

fn machine_line(m: &Machine) -> String {
    format!(
        "{} × {}, {}, {}, syncline {}",
        m.cpus,
        m.cpu,
        m.memory_bytes
            .map(|b| format!("{:.0} GiB", b as f64 / (1u64 << 30) as f64))
            .unwrap_or_else(|| "memory unknown".into()),
        m.os,
        m.syncline
    )
}

/// This machine.
pub(crate) fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    let memory_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024);
    Machine {
        cpu,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_bytes,
        os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
        syncline: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_read_well() {
        assert_eq!(rate(612_345.0), "612k");
        assert_eq!(rate(1_234_567.0), "1.23M");
        assert_eq!(rate(950.4), "950");
        assert_eq!(micros(230), "230 µs");
        assert_eq!(micros(4_700), "4.7 ms");
        assert_eq!(micros(47_000), "47 ms");
        assert_eq!(micros(1_200_000), "1.20 s");
        assert_eq!(percent(0.42), "42%");
        assert_eq!(percent(0.046), "4.6%");
        assert_eq!(percent(0.0037), "0.37%");
    }
}
