//! Nodes as real processes, for the command and multi-process tests.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn syncline() -> Command {
    Command::new(env!("CARGO_BIN_EXE_syncline"))
}

/// A `syncline node` child process.
pub(crate) struct NodeProc {
    pub(crate) name: String,
    pub(crate) config: PathBuf,
    pub(crate) http: String,
    child: Option<Child>,
    log: PathBuf,
    /// Run under this open-file limit (`ulimit -n`).
    nofile: Option<u64>,
}

impl NodeProc {
    /// Writes `toml` to `<dir>/<name>.toml` and starts the node; waits until it answers.
    pub(crate) fn start(dir: &Path, name: &str, http_port: u16, toml: &str) -> NodeProc {
        NodeProc::launch(
            dir,
            name,
            &format!("http://127.0.0.1:{http_port}"),
            toml,
            None,
        )
    }

    /// Like [`NodeProc::start`] for a node serving `listen.http` over TLS (`listen.tls`): it
    /// counts as started once the port accepts connections.
    pub(crate) fn start_https(dir: &Path, name: &str, http_port: u16, toml: &str) -> NodeProc {
        NodeProc::launch(
            dir,
            name,
            &format!("https://127.0.0.1:{http_port}"),
            toml,
            None,
        )
    }

    /// Like [`NodeProc::start`], under an open-file limit of `nofile` (soft and hard).
    pub(crate) fn start_limited(
        dir: &Path,
        name: &str,
        http_port: u16,
        toml: &str,
        nofile: u64,
    ) -> NodeProc {
        NodeProc::launch(
            dir,
            name,
            &format!("http://127.0.0.1:{http_port}"),
            toml,
            Some(nofile),
        )
    }

    fn launch(dir: &Path, name: &str, http: &str, toml: &str, nofile: Option<u64>) -> NodeProc {
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, toml).unwrap();
        let mut n = NodeProc {
            name: name.to_owned(),
            config,
            http: http.to_owned(),
            child: None,
            log: dir.join(format!("{name}.log")),
            nofile,
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = match self.nofile {
            None => syncline(),
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(env!("CARGO_BIN_EXE_syncline"));
                c
            }
        };
        let child = command
            .args(["node", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_healthy();
    }

    pub(crate) fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(addr) = self.http.strip_prefix("https://") {
                if std::net::TcpStream::connect(addr).is_ok() {
                    return;
                }
            } else if let Ok(r) = reqwest::blocking_get(&format!("{}/healthz", self.http))
                && r
            {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!(
                    "node {} exited with {status}: {}",
                    self.name,
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not start: {}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id of the running node.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("the node is running").id()
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL.
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for the exit; returns whether it exited successfully.
    pub(crate) fn terminate(&mut self, within: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Starts the node again after [`NodeProc::kill`] or [`NodeProc::terminate`] (without killing
    /// anything first); waits until it answers.
    pub(crate) fn start_again(&mut self) {
        assert!(self.child.is_none(), "node {} is still running", self.name);
        self.spawn();
    }

    /// The last `lines` lines of the node's log (all its runs, appended), without colours.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        let text = strip_ansi(&self.log_text());
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `GET url` as JSON, whatever the status; `None` if there is no answer or it is not JSON.
pub(crate) fn get_json(
    client: &::reqwest::blocking::Client,
    url: &str,
) -> Option<serde_json::Value> {
    client.get(url).send().ok()?.json().ok()
}

/// Every operation of `doc` on `node`, through all the pages of
/// `GET /v1/documents/{doc}/operations`; `None` if the node does not answer or answers an error.
pub(crate) fn all_operations(
    client: &::reqwest::blocking::Client,
    node: &str,
    doc: &str,
) -> Option<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let v = get_json(
            client,
            &format!("{node}/v1/documents/{doc}/operations?offset={offset}"),
        )?;
        out.extend(v["operations"].as_array()?.iter().cloned());
        match v["next_offset"].as_u64() {
            Some(next) => offset = next,
            None => return Some(out),
        }
    }
}

/// A tiny blocking GET (no async runtime needed in these helpers).
pub(crate) mod reqwest {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    /// Whether `url` (http://host:port/path) answers 200.
    pub(crate) fn blocking_get(url: &str) -> std::io::Result<bool> {
        let rest = url.trim_start_matches("http://");
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let mut s = TcpStream::connect(host)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(
            s,
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        Ok(buf.starts_with("HTTP/1.1 200"))
    }
}
