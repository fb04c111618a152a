//! `switchboard check-config`: the effective configuration of `serve`, with
//! secrets masked and the origin of every value (flag, env, file, default).

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// Runs `check-config` with only the given variables (nothing inherited but PATH).
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("check-config").args(args).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("running switchboard")
}

fn json(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, Value, String) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = run(&all, env);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (out.status.code(), v, stdout)
}

/// The (value, source) of one setting.
fn setting<'a>(v: &'a Value, key: &str) -> (&'a str, &'a str) {
    let s = v["settings"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["key"] == key))
        .unwrap_or_else(|| panic!("no setting {key} in {v}"));
    (
        s["value"].as_str().unwrap_or_default(),
        s["source"].as_str().unwrap_or_default(),
    )
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sb-check-config-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[test]
fn every_value_says_where_it_came_from_flag_over_env_over_file_over_default() {
    let dir = scratch("precedence");
    let file = dir.join("switchboard.toml");
    std::fs::write(
        &file,
        "max_body_bytes = 1000\nconn_burst = 7\nheartbeat_secs = 9\nnode_id = \"from-file\"\n\
         admin_token = \"file-admin-S3KR1T\"\n",
    )
    .unwrap();
    let file_arg = file.to_str().unwrap();
    let (code, v, stdout) = json(
        &[
            "--config",
            file_arg,
            "--max-body-bytes",
            "3000",
            "--jwt-secret",
            "flag-jwt-S3KR1T",
        ],
        &[
            ("SWITCHBOARD_MAX_BODY_BYTES", "2000"),
            ("SWITCHBOARD_CONN_BURST", "8"),
            (
                "SWITCHBOARD_ADAPTER_KEY",
                "w1/sms+wa:env-adapter-S3KR1T,op-S3KR1T",
            ),
            (
                "SWITCHBOARD_REDIS_URL",
                "redis://:redis-pw-S3KR1T@10.0.0.5:6379/0",
            ),
        ],
    );
    assert_eq!(code, Some(0), "{stdout}");
    assert_eq!(setting(&v, "config"), (file_arg, "flag --config"));
    // flag > env > file > default
    assert_eq!(
        setting(&v, "max_body_bytes"),
        ("3000", "flag --max-body-bytes")
    );
    assert_eq!(
        setting(&v, "conn_burst"),
        ("8", "env SWITCHBOARD_CONN_BURST")
    );
    let from_file = format!("file {file_arg}");
    assert_eq!(setting(&v, "heartbeat_secs"), ("9", from_file.as_str()));
    assert_eq!(setting(&v, "node_id"), ("from-file", from_file.as_str()));
    assert_eq!(setting(&v, "idle_timeout_secs"), ("60", "default"));
    assert_eq!(setting(&v, "listen"), ("127.0.0.1:8080", "default"));
    // Secrets are masked wherever they came from; scopes and hosts are not secret.
    assert_eq!(setting(&v, "jwt_secret"), ("****", "flag --jwt-secret"));
    assert_eq!(setting(&v, "admin_token"), ("****", from_file.as_str()));
    assert_eq!(
        setting(&v, "adapter_key"),
        ("w1/sms+wa:****,****", "env SWITCHBOARD_ADAPTER_KEY")
    );
    assert_eq!(
        setting(&v, "redis_url"),
        ("redis://****@10.0.0.5:6379/0", "env SWITCHBOARD_REDIS_URL")
    );
    assert!(
        !stdout.contains("S3KR1T"),
        "a secret in the output: {stdout}"
    );
    assert_eq!(v["problems"], serde_json::json!([]));

    // The text form says the same, one line per setting.
    let out = run(&["--config", file_arg, "--max-body-bytes", "3000"], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("S3KR1T"), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("max_body_bytes "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains("3000") && line.ends_with("flag --max-body-bytes"),
        "{line}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_file_can_be_named_by_its_variable() {
    let dir = scratch("env-file");
    let file = dir.join("c.toml");
    std::fs::write(&file, "history_len = 5\n").unwrap();
    let (code, v, stdout) = json(&[], &[("SWITCHBOARD_CONFIG", file.to_str().unwrap())]);
    assert_eq!(code, Some(0), "{stdout}");
    assert_eq!(setting(&v, "config").1, "env SWITCHBOARD_CONFIG");
    assert_eq!(setting(&v, "history_len").0, "5");
    let _ = std::fs::remove_dir_all(&dir);
}

/// On loopback, unset credentials take development values; elsewhere `serve`
/// refuses them, and so does `check-config` (exit status 2, problems listed).
#[test]
fn what_serve_would_refuse_is_a_problem() {
    let (code, v, stdout) = json(&[], &[]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(setting(&v, "admin_token").0.contains("development value"));

    let (code, v, stdout) = json(
        &["--listen", "0.0.0.0:8080", "--admin-token", "t"],
        &[("SWITCHBOARD_ADAPTER_KEY", "w1:")],
    );
    assert_eq!(code, Some(2), "{stdout}");
    let problems = v["problems"].to_string();
    assert!(problems.contains("SWITCHBOARD_JWT_SECRET"), "{problems}");
    assert!(problems.contains("empty adapter key"), "{problems}");
    assert!(!problems.contains("SWITCHBOARD_ADMIN_TOKEN"), "{problems}");

    // An outbound CA file that cannot be read is a problem.
    let missing = scratch("ca").join("sb-ca.pem").display().to_string();
    let (code, v, stdout) = json(&[], &[("SWITCHBOARD_OUTBOUND_CA_FILE", missing.as_str())]);
    assert_eq!(code, Some(2), "{stdout}");
    assert!(v["problems"].to_string().contains("sb-ca.pem"), "{stdout}");

    // A bad value is refused as `serve` refuses it.
    let out = run(&["--log-format", "yaml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("log_format"));
}
