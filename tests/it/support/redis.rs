//! A private `redis-server` for a test: its own free loopback port and data
//! folder, never the shared instance on 6379. Killed when dropped; can be
//! killed with SIGKILL and restarted on the same port and folder (with
//! `appendonly` its data survives).
//!
//! A missing `redis-server` fails the test loudly: the cluster tests never skip.
//! `REDIS_SERVER` names another binary.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
    appendonly: bool,
    /// More `redis-server` arguments (e.g. cluster mode).
    extra: Vec<String>,
    /// A sentinel: the `sentinel …` lines of its config file.
    sentinel: Option<String>,
}

fn binary() -> PathBuf {
    if let Some(b) = std::env::var_os("REDIS_SERVER") {
        return PathBuf::from(b);
    }
    for dir in std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
    {
        let candidate = dir.join("redis-server");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "redis-server is not installed (apt-get install redis-server, or set REDIS_SERVER): \
         the cluster tests need their own Redis and do not skip"
    );
}

/// A port nothing listens on now, never the same twice in this process
/// (tests start servers concurrently; the kernel may hand a just-released
/// port out again).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a free port");
        let port = l.local_addr().expect("local address").port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// In `redis-server` arguments, stands for a fresh [`free_port`] on every
/// start attempt (e.g. a cluster node's bus port, which another process may
/// take between two attempts).
pub const FREE_PORT: &str = "{free-port}";

/// Sends `PING` and reads the answer (`+PONG`), within a short timeout.
fn answers(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

impl Redis {
    /// Starts a server; `appendonly` makes its data survive a `kill -9`
    /// (`appendfsync always`).
    pub fn start(appendonly: bool) -> Redis {
        Self::start_with(appendonly, &[])
    }

    /// A server with more `redis-server` arguments.
    pub fn start_with(appendonly: bool, extra: &[String]) -> Redis {
        Self::start_as(appendonly, extra, None)
    }

    /// A Redis Sentinel (`redis-server <conf> --sentinel`) with these
    /// `sentinel …` lines in its config file (which it rewrites).
    pub fn start_sentinel(conf: &str) -> Redis {
        Self::start_as(false, &[], Some(conf.to_owned()))
    }

    fn start_as(appendonly: bool, extra: &[String], sentinel: Option<String>) -> Redis {
        let bin = binary();
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("redis-it-{}-{port}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("creating the Redis data folder");
            let mut r = Redis {
                child: None,
                port,
                dir,
                appendonly,
                extra: extra
                    .iter()
                    .map(|a| match a.as_str() {
                        FREE_PORT => free_port().to_string(),
                        _ => a.clone(),
                    })
                    .collect(),
                sentinel: sentinel.clone(),
            };
            match r.spawn(&bin) {
                Ok(()) => return r,
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start: {last}");
    }

    fn spawn(&mut self, bin: &PathBuf) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("redis.log"))
            .map_err(|e| format!("redis log: {e}"))?;
        let mut cmd = Command::new(bin);
        if let Some(conf) = &self.sentinel {
            let file = self.dir.join("sentinel.conf");
            std::fs::write(&file, conf).map_err(|e| format!("sentinel.conf: {e}"))?;
            cmd.arg(file).arg("--sentinel");
        }
        let child = cmd
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", if self.appendonly { "yes" } else { "no" }])
            .args(["--appendfsync", "always"])
            .args(["--dir", &self.dir.to_string_lossy()])
            .args(["--daemonize", "no"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(format!(
                    "exited with {status}; log:\n{}",
                    std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
                ));
            }
            if answers(self.port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill9();
                return Err("no PONG within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// SIGKILL, and waits until the process is gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and folder.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart: the server is still running");
        let bin = binary();
        // The port was ours a moment ago; retry briefly in case it lingers.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn(&bin) {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("redis-server did not restart: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill9();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("redis data and log kept in {}", self.dir.display());
        }
    }
}

/// Calls of these commands so far (lowercase, e.g. `evalsha`), from `INFO
/// commandstats`.
pub async fn command_calls(
    conn: &mut ::redis::aio::MultiplexedConnection,
    commands: &[&str],
) -> u64 {
    let info: String = ::redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO commandstats");
    info.lines()
        .filter_map(|l| {
            let (name, stats) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            if !commands.contains(&name) {
                return None;
            }
            stats
                .split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}
