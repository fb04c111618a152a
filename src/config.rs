//! Configuration: command-line flags, `SWITCHBOARD_*` environment variables and
//! an optional TOML file, in that order of precedence (flag > env > file > default).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use serde::Deserialize;

/// The JWT secret when none is configured: for development only, and
/// accepted only on a loopback listener (see `server`).
pub const DEV_SECRET: &str = "dev-secret";

/// Limits and timings a client sees (also announced in `hello`).
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_frame_bytes: usize,
    pub max_body_bytes: usize,
    /// Largest file a message may attach (by reference), in bytes.
    pub max_attachment_bytes: u64,
    pub outbound_queue: usize,
    pub conn_rate_per_sec: u32,
    pub conn_burst: u32,
    pub adapter_rate_per_sec: u32,
    pub heartbeat_secs: u64,
    pub idle_timeout_secs: u64,
}

/// Which workspaces' changes a node takes from the Redis bus. Both answer
/// every HTTP and WebSocket request the same: a node that does not follow a
/// workspace asks Redis (bare ids, lists) and follows it while it serves it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Subscribe {
    /// Every workspace (`PSUBSCRIBE`): every node decodes every workspace's
    /// events and answers from memory. The default without Redis (where
    /// the node has every workspace anyway).
    #[default]
    All,
    /// Only workspaces with a live connection or request on this node,
    /// loaded when first needed and dropped `linger_secs` after the last.
    /// The default with Redis: a node's bus cost grows with the workspaces
    /// it serves, not with the whole cluster's traffic.
    Interest { linger_secs: u64 },
}

impl Subscribe {
    /// Seconds a workspace nobody holds stays followed, by default.
    pub const LINGER_SECS: u64 = 30;

    /// The mode when none is set: `interest` with Redis, else `all`.
    pub fn default_for(with_redis: bool) -> Subscribe {
        if with_redis {
            Subscribe::Interest {
                linger_secs: Self::LINGER_SECS,
            }
        } else {
            Subscribe::All
        }
    }

    /// `all`, `interest` or `interest:<linger seconds>`.
    pub fn parse(s: &str) -> Option<Subscribe> {
        match s.split_once(':') {
            None if s == "all" => Some(Subscribe::All),
            None if s == "interest" => Some(Subscribe::Interest {
                linger_secs: Self::LINGER_SECS,
            }),
            Some(("interest", secs)) => Some(Subscribe::Interest {
                linger_secs: secs.parse().ok()?,
            }),
            _ => None,
        }
    }

    pub fn describe(self) -> String {
        match self {
            Subscribe::All => "all".to_owned(),
            Subscribe::Interest { linger_secs } => format!("interest:{linger_secs}"),
        }
    }

    /// How long an unheld workspace stays followed; `None` in mode `all`.
    pub fn linger(self) -> Option<std::time::Duration> {
        match self {
            Subscribe::All => None,
            Subscribe::Interest { linger_secs } => {
                Some(std::time::Duration::from_secs(linger_secs))
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub jwt_secret: Option<String>,
    pub jwt_public_key_file: Option<PathBuf>,
    pub max_token_lifetime_secs: u64,
    pub admin_token: Option<String>,
    pub adapter_keys: Vec<String>,
    pub redis_url: Option<String>,
    /// Redis only: follow every workspace, or only those this node serves.
    pub subscribe: Subscribe,
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
    pub outbound: OutboundSettings,
}

/// Delivery to channel adapters (`src/outbound/`).
#[derive(Clone, Debug)]
pub struct OutboundSettings {
    pub max_age_secs: u64,
    pub in_flight: usize,
    pub timeout_ms: u64,
    pub retry_base_ms: u64,
    pub secret_grace_secs: u64,
    pub lease_ms: u64,
    /// CA certificates trusted for https:// adapters beside the built-in roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for OutboundSettings {
    fn default() -> Self {
        OutboundSettings {
            max_age_secs: 86400,
            in_flight: 32,
            timeout_ms: 10000,
            retry_base_ms: 500,
            secret_grace_secs: 86400,
            lease_ms: 10000,
            ca_file: None,
        }
    }
}

/// Flags of `switchboard serve`; each also reads its `SWITCHBOARD_*` variable
/// and, but for `config`, the TOML key of the same name.
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
    /// Longest lifetime of an agent JWT in seconds (exp - iat, or exp - now) [default: 86400].
    #[arg(long, env = "SWITCHBOARD_MAX_TOKEN_LIFETIME_SECS")]
    pub max_token_lifetime_secs: Option<u64>,
    /// Bearer token of the admin API.
    #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Bearer key(s) of channel adapters, comma-separated.
    #[arg(long, env = "SWITCHBOARD_ADAPTER_KEY", hide_env_values = true)]
    pub adapter_key: Option<String>,
    /// Redis URL; unset = one node with embedded state.
    #[arg(long, env = "SWITCHBOARD_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Redis only: `interest` = follow only the workspaces this node serves (`interest:<secs>`: each until that long after its last holder, default 30); `all` = every workspace's changes. Answers are the same in both; `interest` scales with the node's own workspaces [default: interest].
    #[arg(long, env = "SWITCHBOARD_SUBSCRIBE")]
    pub subscribe: Option<String>,
    /// Name of this node [default: $HOSTNAME, then the host name].
    #[arg(long, env = "SWITCHBOARD_NODE_ID")]
    pub node_id: Option<String>,
    /// `text` or `json` [default: text].
    #[arg(long, env = "SWITCHBOARD_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Seconds to drain connections on shutdown [default: 10].
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_GRACE_SECS")]
    pub shutdown_grace_secs: Option<u64>,
    /// Events kept per conversation for history and resume [default: 1000].
    #[arg(long, env = "SWITCHBOARD_HISTORY_LEN")]
    pub history_len: Option<usize>,
    /// Largest WebSocket frame from a client [default: 65536].
    #[arg(long, env = "SWITCHBOARD_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Largest HTTP body [default: 1048576].
    #[arg(long, env = "SWITCHBOARD_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Largest attached file a message may name, in bytes [default: 104857600].
    #[arg(long, env = "SWITCHBOARD_MAX_ATTACHMENT_BYTES")]
    pub max_attachment_bytes: Option<u64>,
    /// Frames queued per connection before it is closed as a slow consumer [default: 1024].
    #[arg(long, env = "SWITCHBOARD_OUTBOUND_QUEUE")]
    pub outbound_queue: Option<usize>,
    /// Client frames per second per connection [default: 50].
    #[arg(long, env = "SWITCHBOARD_CONN_RATE_PER_SEC")]
    pub conn_rate_per_sec: Option<u32>,
    /// Burst of client frames per connection [default: 100].
    #[arg(long, env = "SWITCHBOARD_CONN_BURST")]
    pub conn_burst: Option<u32>,
    /// Posts per second per adapter key [default: 100000].
    #[arg(long, env = "SWITCHBOARD_ADAPTER_RATE_PER_SEC")]
    pub adapter_rate_per_sec: Option<u32>,
    /// Seconds between server pings [default: 25].
    #[arg(long, env = "SWITCHBOARD_HEARTBEAT_SECS")]
    pub heartbeat_secs: Option<u64>,
    /// Seconds of silence before a connection is closed [default: 60].
    #[arg(long, env = "SWITCHBOARD_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// Seconds a connection has to send its request headers [default: 10].
    #[arg(long, env = "SWITCHBOARD_HEADER_READ_TIMEOUT_SECS")]
    pub header_read_timeout_secs: Option<u64>,
    /// Connections per client address still sending their request headers [default: 1024].
    #[arg(long, env = "SWITCHBOARD_MAX_PENDING_PER_IP")]
    pub max_pending_per_ip: Option<u32>,
    /// Seconds an adapter delivery is retried before it is dead-lettered [default: 86400].
    #[arg(long, env = "SWITCHBOARD_OUTBOUND_MAX_AGE_SECS")]
    pub outbound_max_age_secs: Option<u64>,
    /// Adapter deliveries in flight per channel (one per conversation at a time) [default: 32].
    #[arg(long, env = "SWITCHBOARD_OUTBOUND_IN_FLIGHT")]
    pub outbound_in_flight: Option<usize>,
    /// Milliseconds an adapter has to answer a delivery [default: 10000].
    #[arg(long, env = "SWITCHBOARD_OUTBOUND_TIMEOUT_MS")]
    pub outbound_timeout_ms: Option<u64>,
    /// First retry delay of an adapter delivery in milliseconds, doubled per attempt (with jitter) [default: 500].
    #[arg(long, env = "SWITCHBOARD_OUTBOUND_RETRY_BASE_MS")]
    pub outbound_retry_base_ms: Option<u64>,
    /// Seconds a rotated-out outbound secret still signs deliveries [default: 86400].
    #[arg(long, env = "SWITCHBOARD_OUTBOUND_SECRET_GRACE_SECS")]
    pub outbound_secret_grace_secs: Option<u64>,
    /// Milliseconds a node holds a workspace's outbox without renewing (cluster: takeover time after a node dies) [default: 10000].
    #[arg(long, env = "SWITCHBOARD_OUTBOUND_LEASE_MS")]
    pub outbound_lease_ms: Option<u64>,
    /// PEM file of CA certificates trusted for https:// adapters, beside the built-in (Mozilla) roots.
    #[arg(long, env = "SWITCHBOARD_OUTBOUND_CA_FILE")]
    pub outbound_ca_file: Option<PathBuf>,
}

/// The TOML file: the names of the flags (and of the variables without the
/// `SWITCHBOARD_` prefix) in snake_case.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    jwt_secret: Option<String>,
    jwt_public_key_file: Option<PathBuf>,
    max_token_lifetime_secs: Option<u64>,
    admin_token: Option<String>,
    adapter_key: Option<String>,
    redis_url: Option<String>,
    subscribe: Option<String>,
    node_id: Option<String>,
    log_format: Option<String>,
    shutdown_grace_secs: Option<u64>,
    header_read_timeout_secs: Option<u64>,
    max_pending_per_ip: Option<u32>,
    history_len: Option<usize>,
    max_frame_bytes: Option<usize>,
    max_body_bytes: Option<usize>,
    max_attachment_bytes: Option<u64>,
    outbound_queue: Option<usize>,
    conn_rate_per_sec: Option<u32>,
    conn_burst: Option<u32>,
    adapter_rate_per_sec: Option<u32>,
    heartbeat_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    outbound_max_age_secs: Option<u64>,
    outbound_in_flight: Option<usize>,
    outbound_timeout_ms: Option<u64>,
    outbound_retry_base_ms: Option<u64>,
    outbound_secret_grace_secs: Option<u64>,
    outbound_lease_ms: Option<u64>,
    outbound_ca_file: Option<PathBuf>,
}

fn read_file(path: Option<&std::path::Path>) -> anyhow::Result<FileConfig> {
    match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        }
        None => Ok(FileConfig::default()),
    }
}

impl Config {
    /// Flags and variables (both in `args`, parsed by clap) over the file over defaults.
    pub fn load(args: ServeArgs) -> anyhow::Result<Config> {
        let file = read_file(args.config.as_deref())?;
        Self::merge(args, file)
    }

    fn merge(args: ServeArgs, file: FileConfig) -> anyhow::Result<Config> {
        let node_id = args
            .node_id
            .or(file.node_id)
            .unwrap_or_else(|| default_node_id(std::env::var("HOSTNAME").ok(), host_name()));
        let limits = Limits {
            max_frame_bytes: args
                .max_frame_bytes
                .or(file.max_frame_bytes)
                .unwrap_or(64 * 1024),
            max_body_bytes: args
                .max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(1024 * 1024),
            max_attachment_bytes: args
                .max_attachment_bytes
                .or(file.max_attachment_bytes)
                .unwrap_or(100 * 1024 * 1024),
            outbound_queue: args
                .outbound_queue
                .or(file.outbound_queue)
                .unwrap_or(1024)
                .max(1),
            conn_rate_per_sec: args
                .conn_rate_per_sec
                .or(file.conn_rate_per_sec)
                .unwrap_or(50)
                .max(1),
            conn_burst: args.conn_burst.or(file.conn_burst).unwrap_or(100).max(1),
            adapter_rate_per_sec: args
                .adapter_rate_per_sec
                .or(file.adapter_rate_per_sec)
                .unwrap_or(100_000)
                .max(1),
            heartbeat_secs: args
                .heartbeat_secs
                .or(file.heartbeat_secs)
                .unwrap_or(25)
                .max(1),
            idle_timeout_secs: args
                .idle_timeout_secs
                .or(file.idle_timeout_secs)
                .unwrap_or(60)
                .max(2),
        };
        let log_format = args
            .log_format
            .or(file.log_format)
            .unwrap_or_else(|| "text".into());
        if log_format != "text" && log_format != "json" {
            anyhow::bail!("log_format: expected text or json, got {log_format:?}");
        }
        // An empty value counts as unset (e.g. `SWITCHBOARD_ADMIN_TOKEN=`).
        let non_empty = |s: &String| !s.is_empty();
        let with_redis = args
            .redis_url
            .as_ref()
            .or(file.redis_url.as_ref())
            .is_some_and(non_empty);
        let subscribe = match args.subscribe.or(file.subscribe).filter(non_empty) {
            None => Subscribe::default_for(with_redis),
            Some(s) => Subscribe::parse(&s).ok_or_else(|| {
                anyhow::anyhow!("subscribe: expected all, interest or interest:<secs>, got {s:?}")
            })?,
        };
        Ok(Config {
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| ([127, 0, 0, 1], 8080).into()),
            jwt_secret: args.jwt_secret.or(file.jwt_secret).filter(non_empty),
            jwt_public_key_file: args
                .jwt_public_key_file
                .or(file.jwt_public_key_file)
                .filter(|p| !p.as_os_str().is_empty()),
            max_token_lifetime_secs: args
                .max_token_lifetime_secs
                .or(file.max_token_lifetime_secs)
                .unwrap_or(crate::auth::DEFAULT_MAX_LIFETIME_SECS)
                .max(1),
            admin_token: args.admin_token.or(file.admin_token).filter(non_empty),
            adapter_keys: args
                .adapter_key
                .or(file.adapter_key)
                .map(|k| {
                    k.split(',')
                        .map(str::trim)
                        .filter(|k| !k.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default(),
            redis_url: args.redis_url.or(file.redis_url).filter(non_empty),
            subscribe,
            node_id,
            log_format,
            shutdown_grace_secs: args
                .shutdown_grace_secs
                .or(file.shutdown_grace_secs)
                .unwrap_or(10),
            history_len: args.history_len.or(file.history_len).unwrap_or(1000).max(1),
            header_read_timeout_secs: args
                .header_read_timeout_secs
                .or(file.header_read_timeout_secs)
                .unwrap_or(10)
                .max(1),
            max_pending_per_ip: args
                .max_pending_per_ip
                .or(file.max_pending_per_ip)
                .unwrap_or(1024)
                .max(1),
            limits,
            outbound: OutboundSettings {
                max_age_secs: args
                    .outbound_max_age_secs
                    .or(file.outbound_max_age_secs)
                    .unwrap_or(86400)
                    .max(1),
                in_flight: args
                    .outbound_in_flight
                    .or(file.outbound_in_flight)
                    .unwrap_or(32)
                    .max(1),
                timeout_ms: args
                    .outbound_timeout_ms
                    .or(file.outbound_timeout_ms)
                    .unwrap_or(10000)
                    .max(1),
                retry_base_ms: args
                    .outbound_retry_base_ms
                    .or(file.outbound_retry_base_ms)
                    .unwrap_or(500)
                    .max(1),
                secret_grace_secs: args
                    .outbound_secret_grace_secs
                    .or(file.outbound_secret_grace_secs)
                    .unwrap_or(86400),
                lease_ms: args
                    .outbound_lease_ms
                    .or(file.outbound_lease_ms)
                    .unwrap_or(10000)
                    .max(300),
                ca_file: args.outbound_ca_file.or(file.outbound_ca_file),
            },
        })
    }
}

/// Where a setting's value came from (`switchboard check-config`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Flag,
    Env,
    File,
    Default,
}

/// One line of `switchboard check-config`: a setting, its effective value
/// (secrets masked) and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Setting {
    /// The TOML key (the flag is `--key-with-dashes`, the variable `SWITCHBOARD_KEY`).
    pub key: &'static str,
    pub value: String,
    /// `flag --name`, `env SWITCHBOARD_NAME`, `file PATH` or `default` (with a note).
    pub source: String,
}

/// The effective configuration, explained: what `serve` would run with.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Explained {
    pub settings: Vec<Setting>,
    /// Why `serve` would refuse to start with this configuration.
    pub problems: Vec<String>,
}

const MASK: &str = "****";

/// `user:password@` of a URL masked.
fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://{MASK}@{host}"),
        None => url.to_owned(),
    }
}

/// An adapter key entry with its key masked and its scope (not secret) kept.
fn mask_adapter_key(entry: &str) -> String {
    match entry.split_once(':') {
        Some((scope, _)) => format!("{scope}:{MASK}"),
        None => MASK.to_owned(),
    }
}

impl Explained {
    /// Loads the configuration as `serve` does; `given(id)` tells whether clap
    /// took the argument `id` (a field of [`ServeArgs`]) from a flag or from
    /// its variable. A file that cannot be read or parsed is an error.
    pub fn load(args: ServeArgs, given: impl Fn(&str) -> Option<Origin>) -> anyhow::Result<Self> {
        let file_path = args.config.clone();
        let file = read_file(file_path.as_deref())?;
        let origin = |id: &str, in_args: bool, in_file: bool| -> String {
            let flag = id.replace('_', "-");
            let var = format!("SWITCHBOARD_{}", id.to_ascii_uppercase());
            match (in_args, given(id)) {
                (true, Some(Origin::Env)) => format!("env {var}"),
                (true, _) => format!("flag --{flag}"),
                (false, _) if in_file => match &file_path {
                    Some(p) => format!("file {}", p.display()),
                    None => "file".to_owned(),
                },
                _ => "default".to_owned(),
            }
        };
        // The source of every setting, before `merge` consumes args and file.
        let mut sources = std::collections::HashMap::new();
        macro_rules! source {
            ($($f:ident),* $(,)?) => {
                $( sources.insert(stringify!($f), origin(stringify!($f), args.$f.is_some(), file.$f.is_some())); )*
            };
        }
        source!(
            listen,
            jwt_secret,
            jwt_public_key_file,
            max_token_lifetime_secs,
            admin_token,
            adapter_key,
            redis_url,
            subscribe,
            node_id,
            log_format,
            shutdown_grace_secs,
            history_len,
            max_frame_bytes,
            max_body_bytes,
            max_attachment_bytes,
            outbound_queue,
            conn_rate_per_sec,
            conn_burst,
            adapter_rate_per_sec,
            heartbeat_secs,
            idle_timeout_secs,
            header_read_timeout_secs,
            max_pending_per_ip,
            outbound_max_age_secs,
            outbound_in_flight,
            outbound_timeout_ms,
            outbound_retry_base_ms,
            outbound_secret_grace_secs,
            outbound_lease_ms,
            outbound_ca_file,
        );
        let hostname = std::env::var("HOSTNAME").ok();
        let config_row = Setting {
            key: "config",
            value: file_path
                .as_ref()
                .map_or("(none)".to_owned(), |p| p.display().to_string()),
            source: match (file_path.is_some(), given("config")) {
                (false, _) => "default".to_owned(),
                (true, Some(Origin::Env)) => "env SWITCHBOARD_CONFIG".to_owned(),
                (true, _) => "flag --config".to_owned(),
            },
        };
        let c = Config::merge(args, file)?;

        let loopback = c.listen.ip().is_loopback();
        let mut problems = Vec::new();
        // Unset credentials: development values on loopback, else `serve` refuses.
        let mut credential = |value: Option<String>, what: &str, var: &str| match value {
            Some(v) => v,
            None if loopback => format!("(unset: development value {what}, loopback only)"),
            None => {
                problems.push(format!("{var} is required when listening on {}", c.listen));
                "(unset)".to_owned()
            }
        };
        let rs256 = c.jwt_public_key_file.is_some();
        let jwt_secret = match (&c.jwt_secret, rs256) {
            (Some(_), _) => MASK.to_owned(),
            (None, true) => "(unset: RS256 key file in use)".to_owned(),
            (None, false) => credential(
                None,
                "dev-secret",
                "SWITCHBOARD_JWT_SECRET (or SWITCHBOARD_JWT_PUBLIC_KEY_FILE)",
            ),
        };
        let admin_token = credential(
            c.admin_token.as_ref().map(|_| MASK.to_owned()),
            "dev-admin",
            "SWITCHBOARD_ADMIN_TOKEN",
        );
        let adapter_key = credential(
            (!c.adapter_keys.is_empty()).then(|| {
                c.adapter_keys
                    .iter()
                    .map(|k| mask_adapter_key(k))
                    .collect::<Vec<_>>()
                    .join(",")
            }),
            "dev-adapter",
            "SWITCHBOARD_ADAPTER_KEY",
        );
        if let Err(e) = crate::credentials::AdapterKey::parse_all(&c.adapter_keys) {
            problems.push(format!("SWITCHBOARD_ADAPTER_KEY: {e}"));
        }
        // The JWT key and the outbound CA file are parsed when the node
        // starts; here, whether they can be opened for reading.
        for path in [&c.jwt_public_key_file, &c.outbound.ca_file]
            .into_iter()
            .flatten()
        {
            if let Err(e) = std::fs::File::open(path) {
                problems.push(format!("{}: {e}", path.display()));
            }
        }

        let node_source = match sources.get("node_id").map(String::as_str) {
            Some("default") if hostname.is_some() => "default ($HOSTNAME)".to_owned(),
            Some("default") => "default (no $HOSTNAME: node-<pid>)".to_owned(),
            other => other.unwrap_or("default").to_owned(),
        };
        let l = &c.limits;
        let rows: Vec<(&'static str, String)> = vec![
            ("listen", c.listen.to_string()),
            ("jwt_secret", jwt_secret),
            (
                "jwt_public_key_file",
                c.jwt_public_key_file
                    .as_ref()
                    .map_or("(unset)".to_owned(), |p| p.display().to_string()),
            ),
            (
                "max_token_lifetime_secs",
                c.max_token_lifetime_secs.to_string(),
            ),
            ("admin_token", admin_token),
            ("adapter_key", adapter_key),
            (
                "redis_url",
                c.redis_url
                    .as_deref()
                    .map_or("(unset: embedded single node)".to_owned(), mask_url),
            ),
            (
                "node_id",
                // Without a name or $HOSTNAME, `serve` names itself after its own pid.
                match (sources.get("node_id").map(String::as_str), &hostname) {
                    (Some("default"), None) => "node-<pid>".to_owned(),
                    _ => c.node_id.clone(),
                },
            ),
            ("subscribe", c.subscribe.describe()),
            ("log_format", c.log_format.clone()),
            ("shutdown_grace_secs", c.shutdown_grace_secs.to_string()),
            ("history_len", c.history_len.to_string()),
            ("max_frame_bytes", l.max_frame_bytes.to_string()),
            ("max_body_bytes", l.max_body_bytes.to_string()),
            ("max_attachment_bytes", l.max_attachment_bytes.to_string()),
            ("outbound_queue", l.outbound_queue.to_string()),
            ("conn_rate_per_sec", l.conn_rate_per_sec.to_string()),
            ("conn_burst", l.conn_burst.to_string()),
            ("adapter_rate_per_sec", l.adapter_rate_per_sec.to_string()),
            ("heartbeat_secs", l.heartbeat_secs.to_string()),
            ("idle_timeout_secs", l.idle_timeout_secs.to_string()),
            (
                "header_read_timeout_secs",
                c.header_read_timeout_secs.to_string(),
            ),
            ("max_pending_per_ip", c.max_pending_per_ip.to_string()),
            ("outbound_max_age_secs", c.outbound.max_age_secs.to_string()),
            ("outbound_in_flight", c.outbound.in_flight.to_string()),
            ("outbound_timeout_ms", c.outbound.timeout_ms.to_string()),
            (
                "outbound_retry_base_ms",
                c.outbound.retry_base_ms.to_string(),
            ),
            (
                "outbound_secret_grace_secs",
                c.outbound.secret_grace_secs.to_string(),
            ),
            ("outbound_lease_ms", c.outbound.lease_ms.to_string()),
            (
                "outbound_ca_file",
                c.outbound
                    .ca_file
                    .as_ref()
                    .map_or("(unset)".to_owned(), |p| p.display().to_string()),
            ),
        ];
        let mut settings: Vec<Setting> = rows
            .into_iter()
            .map(|(key, value)| Setting {
                key,
                value,
                source: if key == "node_id" {
                    node_source.clone()
                } else {
                    sources
                        .get(key)
                        .cloned()
                        .unwrap_or_else(|| "default".to_owned())
                },
            })
            .collect();
        settings.insert(0, config_row);
        Ok(Explained { settings, problems })
    }

    /// The human-readable form: one aligned line per setting, then the problems.
    pub fn to_text(&self) -> String {
        let width = self.settings.iter().map(|s| s.key.len()).max().unwrap_or(0);
        let vwidth = self
            .settings
            .iter()
            .map(|s| s.value.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for s in &self.settings {
            out.push_str(&format!(
                "{:width$}  {:vwidth$}  {}\n",
                s.key, s.value, s.source
            ));
        }
        for p in &self.problems {
            out.push_str(&format!("problem: {p}\n"));
        }
        out
    }
}

/// The node id when none is set: `$HOSTNAME` (a pod's name on Kubernetes),
/// then the machine's host name, then `node-<pid>`.
fn default_node_id(env_hostname: Option<String>, host_name: Option<String>) -> String {
    env_hostname
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| {
            host_name
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| format!("node-{}", std::process::id()))
}

/// The kernel's host name (`$HOSTNAME` is a shell variable, often not exported).
fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, FromArgMatches};
    use std::collections::BTreeSet;

    #[test]
    fn node_id_defaults_to_hostname_then_host_name_then_pid() {
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(default_node_id(some("pod-1"), some("box")), "pod-1");
        assert_eq!(default_node_id(some(""), some("box\n")), "box");
        assert_eq!(default_node_id(None, some(" box ")), "box");
        let pid = format!("node-{}", std::process::id());
        assert_eq!(default_node_id(None, some("\n")), pid);
        assert_eq!(default_node_id(some(" "), None), pid);
    }

    /// The `SWITCHBOARD_*` variables of the README configuration table.
    fn readme_variables() -> BTreeSet<String> {
        let readme = include_str!("../README.md");
        let table = readme
            .split("\n## Configuration")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("README has a Configuration section");
        table
            .lines()
            .filter(|l| l.starts_with("| `"))
            .filter_map(|l| l.split('|').nth(1))
            .flat_map(|cell| cell.split('`'))
            .filter(|w| w.starts_with("SWITCHBOARD_"))
            .map(String::from)
            .collect()
    }

    fn key(variable: &str) -> String {
        variable
            .trim_start_matches("SWITCHBOARD_")
            .to_ascii_lowercase()
    }

    fn serve_command() -> clap::Command {
        ServeArgs::augment_args(clap::Command::new("serve"))
    }

    fn parse_flags(flags: &[&str]) -> ServeArgs {
        let m = serve_command()
            .try_get_matches_from(std::iter::once("serve").chain(flags.iter().copied()))
            .expect("flags parse");
        ServeArgs::from_arg_matches(&m).expect("flags")
    }

    /// The README table, the flags with their variables and the TOML keys name
    /// the same settings.
    #[test]
    fn readme_table_flags_variables_and_toml_keys_agree() {
        let documented = readme_variables();
        assert!(documented.len() >= 18, "table not found: {documented:?}");
        let cmd = serve_command();
        let mut flags = BTreeSet::new();
        for arg in cmd.get_arguments() {
            let env = arg.get_env().and_then(|e| e.to_str()).map(String::from);
            let env = env.unwrap_or_else(|| panic!("--{:?} reads no variable", arg.get_long()));
            // `--name` reads `SWITCHBOARD_NAME`.
            assert_eq!(
                arg.get_long().map(|l| l.replace('-', "_")),
                Some(key(&env)),
                "{env}"
            );
            flags.insert(env);
        }
        // The file itself is named by flag or variable only (the README says so above the table).
        flags.remove("SWITCHBOARD_CONFIG");
        assert_eq!(flags, documented, "flags (left) vs README table (right)");

        // A file with every documented key, each set, is accepted...
        let strings = [
            "jwt_secret",
            "jwt_public_key_file",
            "admin_token",
            "adapter_key",
            "redis_url",
            "node_id",
            "outbound_ca_file",
        ];
        let text: String = documented
            .iter()
            .map(|v| {
                let k = key(v);
                let value = match k.as_str() {
                    "listen" => "\"127.0.0.1:9\"".to_owned(),
                    "log_format" => "\"json\"".to_owned(),
                    "subscribe" => "\"interest\"".to_owned(),
                    k if strings.contains(&k) => format!("\"{k}-value\""),
                    _ => "7".to_owned(),
                };
                format!("{k} = {value}\n")
            })
            .collect();
        let file: FileConfig =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\nin the file:\n{text}"));
        // ...and sets every field of the file's structure (no undocumented key).
        let debug = format!("{file:?}");
        assert!(
            !debug.contains("None"),
            "a file key the README lacks: {debug}"
        );
        let c = Config::merge(ServeArgs::default(), file).expect("config");
        assert_eq!(c.jwt_secret.as_deref(), Some("jwt_secret-value"));
        assert_eq!(c.admin_token.as_deref(), Some("admin_token-value"));
        assert_eq!(c.adapter_keys, ["adapter_key-value"]);
        assert_eq!(c.max_token_lifetime_secs, 7);
        assert_eq!(c.listen, SocketAddr::from(([127, 0, 0, 1], 9)));
        assert_eq!(c.limits.conn_burst, 7);
    }

    #[test]
    fn flag_over_file_over_default() {
        let file = || {
            toml::from_str::<FileConfig>("max_token_lifetime_secs = 600\njwt_secret = \"f\"\n")
                .expect("file")
        };
        let c = Config::merge(ServeArgs::default(), FileConfig::default()).expect("config");
        assert_eq!(c.max_token_lifetime_secs, 24 * 3600);
        assert_eq!(c.jwt_secret, None);
        let c = Config::merge(ServeArgs::default(), file()).expect("config");
        assert_eq!(c.max_token_lifetime_secs, 600);
        assert_eq!(c.jwt_secret.as_deref(), Some("f"));
        let args = parse_flags(&["--max-token-lifetime-secs", "60", "--jwt-secret", "a"]);
        let c = Config::merge(args, file()).expect("config");
        assert_eq!(c.max_token_lifetime_secs, 60);
        assert_eq!(c.jwt_secret.as_deref(), Some("a"));
    }

    /// `check-config` explains every documented setting, and the file itself.
    #[test]
    fn check_config_explains_every_setting() {
        let e = Explained::load(ServeArgs::default(), |_| None).expect("config");
        let keys: BTreeSet<String> = e.settings.iter().map(|s| s.key.to_owned()).collect();
        let mut expected: BTreeSet<String> = readme_variables().iter().map(|v| key(v)).collect();
        expected.insert("config".to_owned());
        assert_eq!(keys, expected);
        assert!(e
            .settings
            .iter()
            .all(|s| s.source == "default" || s.key == "node_id"));
    }

    #[test]
    fn masking_keeps_what_is_not_secret() {
        assert_eq!(mask_adapter_key("w1/a+b:k"), "w1/a+b:****");
        assert_eq!(mask_adapter_key("k"), "****");
        assert_eq!(mask_url("redis://:pw@h:6379/0"), "redis://****@h:6379/0");
        assert_eq!(mask_url("redis://u:p@ss@h"), "redis://****@h");
        assert_eq!(mask_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(
            mask_url("redis+sentinel://:pw@h1:26379,h2/m?sentinel_auth=none"),
            "redis+sentinel://****@h1:26379,h2/m?sentinel_auth=none"
        );
    }

    #[test]
    fn connection_limits_flag_over_file_over_default() {
        let c = Config::merge(ServeArgs::default(), FileConfig::default()).expect("config");
        assert_eq!(
            (c.header_read_timeout_secs, c.max_pending_per_ip),
            (10, 1024)
        );
        let file = || {
            toml::from_str::<FileConfig>("header_read_timeout_secs = 7\nmax_pending_per_ip = 5\n")
                .expect("file")
        };
        let c = Config::merge(ServeArgs::default(), file()).expect("config");
        assert_eq!((c.header_read_timeout_secs, c.max_pending_per_ip), (7, 5));
        let args = parse_flags(&["--max-pending-per-ip", "9"]);
        let c = Config::merge(args, file()).expect("config");
        assert_eq!((c.header_read_timeout_secs, c.max_pending_per_ip), (7, 9));
    }

    /// Subscribe mode `interest` is the default with Redis (set by flag or
    /// file), `all` without; an empty value is unset; `all` stays selectable.
    #[test]
    fn subscribe_defaults_to_interest_with_redis() {
        let interest = Subscribe::Interest {
            linger_secs: Subscribe::LINGER_SECS,
        };
        let mode = |flags: &[&str], file: &str| {
            let file = toml::from_str::<FileConfig>(file).expect("file");
            Config::merge(parse_flags(flags), file)
                .expect("config")
                .subscribe
        };
        assert_eq!(mode(&[], ""), Subscribe::All);
        assert_eq!(mode(&["--redis-url", ""], ""), Subscribe::All);
        assert_eq!(mode(&["--redis-url", "redis://r:6379"], ""), interest);
        assert_eq!(mode(&[], "redis_url = \"redis://r:6379\"\n"), interest);
        let url = ["--redis-url", "redis://r:6379"];
        assert_eq!(
            mode(&[&url[..], &["--subscribe", ""]].concat(), ""),
            interest
        );
        assert_eq!(
            mode(&[&url[..], &["--subscribe", "all"]].concat(), ""),
            Subscribe::All
        );
        assert_eq!(
            mode(&url, "subscribe = \"interest:5\"\n"),
            Subscribe::Interest { linger_secs: 5 }
        );
        assert!(Subscribe::parse("").is_none());
    }

    #[test]
    fn unknown_file_key_is_refused() {
        let e = toml::from_str::<FileConfig>("jwt_secrett = \"x\"\n").err();
        assert!(e.is_some_and(|e| e.to_string().contains("jwt_secrett")));
    }
}
