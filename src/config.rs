//! Configuration: command-line flags, `SWITCHBOARD_*` environment variables and
//! an optional TOML file, in that order of precedence (flag > env > file > default).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use serde::Deserialize;

/// Limits and timings a client sees (also announced in `hello`).
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_frame_bytes: usize,
    pub max_body_bytes: usize,
    pub outbound_queue: usize,
    pub conn_rate_per_sec: u32,
    pub conn_burst: u32,
    pub adapter_rate_per_sec: u32,
    pub heartbeat_secs: u64,
    pub idle_timeout_secs: u64,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub jwt_secret: Option<String>,
    pub jwt_public_key_file: Option<PathBuf>,
    pub admin_token: Option<String>,
    pub adapter_keys: Vec<String>,
    pub redis_url: Option<String>,
    pub node_id: String,
    pub log_format: String,
    pub shutdown_grace_secs: u64,
    pub history_len: usize,
    /// Seconds a new HTTP connection has to send a request's headers.
    pub header_read_timeout_secs: u64,
    /// Connections per client address (IPv6: per /64) still before the end
    /// of their first request's headers; more are closed at accept.
    pub max_pending_per_ip: u32,
    pub limits: Limits,
}

/// Flags of `switchboard serve`; each also reads its `SWITCHBOARD_*` variable.
#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "SWITCHBOARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "SWITCHBOARD_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// HS256 secret for agent JWTs.
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM file with an RS256 public key for agent JWTs (instead of the secret).
    #[arg(long, env = "SWITCHBOARD_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// Bearer token of the admin API.
    #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Bearer key(s) of channel adapters, comma-separated.
    #[arg(long, env = "SWITCHBOARD_ADAPTER_KEY", hide_env_values = true)]
    pub adapter_key: Option<String>,
    /// Redis URL; unset = one node with embedded state.
    #[arg(long, env = "SWITCHBOARD_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Name of this node [default: host name].
    #[arg(long, env = "SWITCHBOARD_NODE_ID")]
    pub node_id: Option<String>,
    /// `text` or `json` [default: text].
    #[arg(long, env = "SWITCHBOARD_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Seconds to drain connections on shutdown [default: 10].
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_GRACE_SECS")]
    pub shutdown_grace_secs: Option<u64>,
    /// Seconds a connection has to send its request headers [default: 10].
    #[arg(long, env = "SWITCHBOARD_HEADER_READ_TIMEOUT_SECS")]
    pub header_read_timeout_secs: Option<u64>,
    /// Connections per client address still sending their request headers [default: 64].
    #[arg(long, env = "SWITCHBOARD_MAX_PENDING_PER_IP")]
    pub max_pending_per_ip: Option<u32>,
}

/// The TOML file: same names as the flags, snake_case.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    jwt_public_key_file: Option<PathBuf>,
    redis_url: Option<String>,
    node_id: Option<String>,
    log_format: Option<String>,
    shutdown_grace_secs: Option<u64>,
    header_read_timeout_secs: Option<u64>,
    max_pending_per_ip: Option<u32>,
    history_len: Option<usize>,
    max_frame_bytes: Option<usize>,
    max_body_bytes: Option<usize>,
    outbound_queue: Option<usize>,
    conn_rate_per_sec: Option<u32>,
    conn_burst: Option<u32>,
    adapter_rate_per_sec: Option<u32>,
    heartbeat_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
}

fn env_parse<T: std::str::FromStr>(name: &str) -> anyhow::Result<Option<T>> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .map(Some)
            .map_err(|_| anyhow::anyhow!("{name}: cannot parse {v:?}")),
        _ => Ok(None),
    }
}

impl Config {
    pub fn load(args: ServeArgs) -> anyhow::Result<Config> {
        let file: FileConfig = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let node_id = args
            .node_id
            .or(file.node_id)
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| format!("node-{}", std::process::id()));
        let pick = |name: &str, file: Option<u64>, default: u64| -> anyhow::Result<u64> {
            Ok(env_parse(name)?.or(file).unwrap_or(default))
        };
        let limits = Limits {
            max_frame_bytes: pick(
                "SWITCHBOARD_MAX_FRAME_BYTES",
                file.max_frame_bytes.map(|v| v as u64),
                64 * 1024,
            )? as usize,
            max_body_bytes: pick(
                "SWITCHBOARD_MAX_BODY_BYTES",
                file.max_body_bytes.map(|v| v as u64),
                1024 * 1024,
            )? as usize,
            outbound_queue: pick(
                "SWITCHBOARD_OUTBOUND_QUEUE",
                file.outbound_queue.map(|v| v as u64),
                1024,
            )?
            .max(1) as usize,
            conn_rate_per_sec: pick(
                "SWITCHBOARD_CONN_RATE_PER_SEC",
                file.conn_rate_per_sec.map(u64::from),
                50,
            )?
            .max(1) as u32,
            conn_burst: pick(
                "SWITCHBOARD_CONN_BURST",
                file.conn_burst.map(u64::from),
                100,
            )?
            .max(1) as u32,
            adapter_rate_per_sec: pick(
                "SWITCHBOARD_ADAPTER_RATE_PER_SEC",
                file.adapter_rate_per_sec.map(u64::from),
                100_000,
            )?
            .max(1) as u32,
            heartbeat_secs: pick("SWITCHBOARD_HEARTBEAT_SECS", file.heartbeat_secs, 25)?.max(1),
            idle_timeout_secs: pick("SWITCHBOARD_IDLE_TIMEOUT_SECS", file.idle_timeout_secs, 60)?
                .max(2),
        };
        let log_format = args
            .log_format
            .or(file.log_format)
            .unwrap_or_else(|| "text".into());
        if log_format != "text" && log_format != "json" {
            anyhow::bail!("log_format: expected text or json, got {log_format:?}");
        }
        Ok(Config {
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| ([127, 0, 0, 1], 8080).into()),
            jwt_secret: args.jwt_secret.filter(|s| !s.is_empty()),
            jwt_public_key_file: args.jwt_public_key_file.or(file.jwt_public_key_file),
            admin_token: args.admin_token.filter(|s| !s.is_empty()),
            adapter_keys: args
                .adapter_key
                .map(|k| {
                    k.split(',')
                        .map(str::trim)
                        .filter(|k| !k.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default(),
            redis_url: args.redis_url.or(file.redis_url).filter(|s| !s.is_empty()),
            node_id,
            log_format,
            shutdown_grace_secs: args
                .shutdown_grace_secs
                .or(file.shutdown_grace_secs)
                .unwrap_or(10),
            history_len: pick(
                "SWITCHBOARD_HISTORY_LEN",
                file.history_len.map(|v| v as u64),
                1000,
            )?
            .max(1) as usize,
            header_read_timeout_secs: args
                .header_read_timeout_secs
                .or(file.header_read_timeout_secs)
                .unwrap_or(10)
                .max(1),
            max_pending_per_ip: args
                .max_pending_per_ip
                .or(file.max_pending_per_ip)
                .unwrap_or(64)
                .max(1),
            limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_limits_come_from_the_file_and_flags() {
        let path =
            std::env::temp_dir().join(format!("switchboard-config-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            "header_read_timeout_secs = 7\nmax_pending_per_ip = 5\n",
        )
        .expect("writing the file");
        let from_file = Config::load(ServeArgs {
            config: Some(path.clone()),
            ..ServeArgs::default()
        });
        let from_flag = Config::load(ServeArgs {
            config: Some(path.clone()),
            max_pending_per_ip: Some(9),
            ..ServeArgs::default()
        });
        let _ = std::fs::remove_file(&path);
        let from_file = from_file.expect("config");
        assert_eq!(from_file.header_read_timeout_secs, 7);
        assert_eq!(from_file.max_pending_per_ip, 5);
        assert_eq!(from_flag.expect("config").max_pending_per_ip, 9);
        let default = Config::load(ServeArgs::default()).expect("default config");
        assert_eq!(
            (default.header_read_timeout_secs, default.max_pending_per_ip),
            (10, 64)
        );
    }
}
