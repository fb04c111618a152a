//! Processes the harness starts itself: gateway nodes, redis-server, the
//! Socket.IO peer, the floor server. All listen on 127.0.0.1 only, on free ports.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::process::{Child, Command};

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(l.local_addr()?.port())
}

/// A child process with its log file; killed when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub pid: u32,
    pub log: PathBuf,
}

impl Proc {
    /// Last lines of the process's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub async fn stop(mut self) {
        // SIGTERM first, so a gateway can drain; then kill.
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Result<Proc> {
    std::fs::create_dir_all(log_dir)?;
    let log = log_dir.join(format!("{name}.log"));
    let f = std::fs::File::create(&log)?;
    cmd.stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .kill_on_drop(true);
    let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
    let pid = child.id().ok_or_else(|| anyhow!("{name}: no pid"))?;
    Ok(Proc {
        name: name.to_owned(),
        child,
        pid,
        log,
    })
}

/// Waits until `GET {base}/healthz` answers 2xx, or the process exits, or the timeout.
pub async fn wait_healthy(p: &mut Proc, base: &str, timeout: Duration) -> Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = p.exited() {
            bail!(
                "{} exited with {status} before becoming healthy; last log lines:\n{}",
                p.name,
                p.log_tail(15)
            );
        }
        if let Ok(r) = client
            .get(format!("{base}/healthz"))
            .timeout(Duration::from_millis(500))
            .send()
            .await
        {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{} not healthy at {base}/healthz after {timeout:?}; last log lines:\n{}",
                p.name,
                p.log_tail(15)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Credentials shared by the harness and the processes it starts.
#[derive(Clone, Debug)]
pub struct Secrets {
    pub jwt_secret: String,
    pub admin_token: String,
    pub adapter_key: String,
}

impl Secrets {
    pub fn generate(seed: u64) -> Secrets {
        let mut r = crate::world::Rng::new(seed ^ std::process::id() as u64 ^ now_nanos());
        let mut token =
            |prefix: &str| format!("{prefix}-{:016x}{:016x}", r.next_u64(), r.next_u64());
        Secrets {
            jwt_secret: token("jwt"),
            admin_token: token("admin"),
            adapter_key: token("adapter"),
        }
    }
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Starts `switchboard serve` on a free port and waits for `/healthz`.
pub async fn spawn_gateway(
    bin: &Path,
    name: &str,
    secrets: &Secrets,
    redis_url: Option<&str>,
    extra_env: &[(String, String)],
    log_dir: &Path,
) -> Result<(Proc, SocketAddr)> {
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .env("SWITCHBOARD_LISTEN", addr.to_string())
        .env("SWITCHBOARD_JWT_SECRET", &secrets.jwt_secret)
        .env("SWITCHBOARD_ADMIN_TOKEN", &secrets.admin_token)
        .env("SWITCHBOARD_ADAPTER_KEY", &secrets.adapter_key)
        .env("SWITCHBOARD_NODE_ID", name)
        // Thousands of simulated clients share a few loopback addresses and
        // connect hundreds at once: the per-address cap on connections still
        // sending their headers (default 64) would refuse most of them.
        .env("SWITCHBOARD_MAX_PENDING_PER_IP", "1000000")
        .env(
            "RUST_LOG",
            std::env::var("LOADTEST_GATEWAY_LOG").unwrap_or_else(|_| "warn".into()),
        );
    if let Some(url) = redis_url {
        cmd.env("SWITCHBOARD_REDIS_URL", url);
    } else {
        cmd.env_remove("SWITCHBOARD_REDIS_URL");
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut p =
        spawn(name, cmd, log_dir).with_context(|| format!("spawning gateway {}", bin.display()))?;
    wait_healthy(&mut p, &format!("http://{addr}"), Duration::from_secs(30)).await?;
    Ok((p, addr))
}

/// Starts a private redis-server on a free port (no persistence).
pub async fn spawn_redis(log_dir: &Path) -> Result<(Proc, String)> {
    let port = free_port()?;
    let p = spawn_redis_on(port, &[], log_dir).await?;
    Ok((p, format!("redis://127.0.0.1:{port}")))
}

/// Starts redis-server on `port` with `extra` arguments and waits until it listens.
async fn spawn_redis_on(port: u16, extra: &[String], log_dir: &Path) -> Result<Proc> {
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "yes",
    ])
    .args(extra);
    let mut p = spawn(&format!("redis-{port}"), cmd, log_dir)
        .context("starting redis-server (apt-get install redis-server)")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = p.exited() {
            bail!("redis-server exited with {status}:\n{}", p.log_tail(10));
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(p);
        }
        if Instant::now() > deadline {
            bail!("redis-server not listening after 10 s:\n{}", p.log_tail(10));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The gateway's URL for a Redis Cluster reachable at `ports` on 127.0.0.1
/// (`redis+cluster://host:port,host:port,…`, as src/store/redis/conn.rs reads it).
pub fn cluster_url(ports: &[u16]) -> String {
    let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    format!("redis+cluster://{}", hosts.join(","))
}

/// Whether `CLUSTER INFO` output says every slot is served.
pub fn cluster_state_ok(info: &str) -> bool {
    info.lines().any(|l| l.trim() == "cluster_state:ok")
}

async fn redis_cli(args: &[String]) -> Result<std::process::Output> {
    Command::new(std::env::var("REDIS_CLI").unwrap_or_else(|_| "redis-cli".into()))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .context("running redis-cli (apt-get install redis-server, or set REDIS_CLI)")
}

/// Starts a private Redis Cluster of `primaries` primaries (no replicas, no
/// persistence) on free loopback ports: `redis-server --cluster-enabled yes`
/// each with its own folder under `log_dir`, joined with `redis-cli --cluster
/// create … --cluster-yes`, then waits until every node reports
/// `cluster_state:ok`. Returns the processes and the gateway's URL.
pub async fn spawn_redis_cluster(primaries: usize, log_dir: &Path) -> Result<(Vec<Proc>, String)> {
    if primaries < 3 {
        bail!("a Redis Cluster needs at least 3 primaries (redis-cli --cluster create), not {primaries}");
    }
    let mut procs = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..primaries {
        let port = free_port()?;
        let bus = free_port()?;
        let dir = log_dir.join(format!("redis-cluster-{port}"));
        std::fs::create_dir_all(&dir)?;
        let extra: Vec<String> = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-port",
            &bus.to_string(),
            "--dir",
            &dir.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        match spawn_redis_on(port, &extra, log_dir).await {
            Ok(p) => procs.push(p),
            Err(e) => {
                stop_all(procs).await;
                return Err(e.context("starting a Redis Cluster primary"));
            }
        }
        ports.push(port);
    }
    if let Err(e) = join_cluster(&ports).await {
        stop_all(procs).await;
        return Err(e);
    }
    Ok((procs, cluster_url(&ports)))
}

async fn join_cluster(ports: &[u16]) -> Result<()> {
    let mut create = vec!["--cluster".to_owned(), "create".to_owned()];
    create.extend(ports.iter().map(|p| format!("127.0.0.1:{p}")));
    create.push("--cluster-yes".to_owned());
    let out = redis_cli(&create).await?;
    if !out.status.success() {
        bail!(
            "redis-cli --cluster create failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut all_ok = true;
        for p in ports {
            let args =
                ["-h", "127.0.0.1", "-p", &p.to_string(), "cluster", "info"].map(str::to_owned);
            let info = redis_cli(&args).await?;
            all_ok &= cluster_state_ok(&String::from_utf8_lossy(&info.stdout));
        }
        if all_ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the Redis Cluster on ports {ports:?} is not cluster_state:ok after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn stop_all(procs: Vec<Proc>) {
    for p in procs {
        p.stop().await;
    }
}

/// The Node peer's directory (`loadtest/peer`).
pub fn peer_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peer")
}

/// Starts one Socket.IO peer node.
pub async fn spawn_peer(
    name: &str,
    redis_url: &str,
    access_file: &Path,
    secrets: &Secrets,
    log_dir: &Path,
) -> Result<(Proc, SocketAddr)> {
    let dir = peer_dir();
    if !dir.join("node_modules").exists() {
        bail!(
            "the peer's packages are not installed: run `npm ci --prefix {}`",
            dir.display()
        );
    }
    // The peer runs in its own folder: a relative `--out` must not reach it as is.
    let access_file = std::path::absolute(access_file)
        .with_context(|| format!("locating {}", access_file.display()))?;
    let port = free_port()?;
    let mut cmd = Command::new("node");
    cmd.current_dir(&dir).arg("server.js").args([
        "--port",
        &port.to_string(),
        "--redis",
        redis_url,
        "--access",
        &access_file.display().to_string(),
        "--secret",
        &secrets.jwt_secret,
        "--adapter-key",
        &secrets.adapter_key,
        "--node",
        name,
    ]);
    let mut p = spawn(name, cmd, log_dir)?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    wait_healthy(&mut p, &format!("http://{addr}"), Duration::from_secs(30)).await?;
    Ok((p, addr))
}

/// Starts the floor server (this binary's hidden `floor-server` command) on a
/// free port; `extra_env` is the gateway's (`--gateway-env`), so that e.g.
/// `SWITCHBOARD_OUTBOUND_QUEUE` and `TOKIO_WORKER_THREADS` apply to both.
pub async fn spawn_floor(
    access_file: &Path,
    secrets: &Secrets,
    extra_env: &[(String, String)],
    log_dir: &Path,
) -> Result<(Proc, SocketAddr)> {
    let exe = std::env::current_exe().context("locating the loadtest binary")?;
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut cmd = Command::new(exe);
    cmd.arg("floor-server")
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--access")
        .arg(access_file)
        .env("FLOOR_JWT_SECRET", &secrets.jwt_secret)
        .env("FLOOR_ADMIN_TOKEN", &secrets.admin_token)
        .env("FLOOR_ADAPTER_KEY", &secrets.adapter_key);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut p = spawn("floor", cmd, log_dir)?;
    wait_healthy(&mut p, &format!("http://{addr}"), Duration::from_secs(30)).await?;
    Ok((p, addr))
}

/// First line of `cmd args` output, for the report's versions.
pub fn version_of(cmd: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(cmd).args(args).output().ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .map(|s| s.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_url_names_every_primary() {
        assert_eq!(
            cluster_url(&[7000, 7001, 7002]),
            "redis+cluster://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002"
        );
    }

    #[test]
    fn cluster_state_is_read_from_cluster_info() {
        let ok = "cluster_state:ok\r\ncluster_slots_assigned:16384\r\n";
        let fail = "cluster_state:fail\r\ncluster_slots_assigned:0\r\n";
        assert!(cluster_state_ok(ok));
        assert!(!cluster_state_ok(fail));
        assert!(!cluster_state_ok(""));
    }
}
