//! The rules of one delivery attempt, pure: what an answer means, how long
//! to wait before the next attempt, and the signature.

use std::time::{Duration, SystemTime};

/// What an adapter's answer means for the delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: taken.
    Done,
    /// 408, 409, 429, 5xx (and transport errors): try again, not before `after`.
    Retry { after: Option<Duration> },
    /// Any other status: the adapter refuses it; retrying cannot help.
    Dead,
}

pub fn verdict(status: u16, retry_after: Option<Duration>) -> Verdict {
    match status {
        200..=299 => Verdict::Done,
        408 | 409 | 429 | 500..=599 => Verdict::Retry { after: retry_after },
        _ => Verdict::Dead,
    }
}

/// An adapter's `Retry-After` (RFC 9110): delay-seconds or an HTTP-date,
/// read against `now`; a date already past means no wait, anything else
/// unreadable means no hint.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The wait before attempt `attempts + 1`: `base` doubled per attempt made,
/// scaled by `jitter` ∈ [0, 1) into [half, whole] (so nodes retrying one
/// adapter spread out), never shorter than the adapter's `Retry-After`.
pub fn backoff(
    attempts: u32,
    base: Duration,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Duration {
    let doubled = base.saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
    let spread = doubled.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
    spread.max(retry_after.unwrap_or(Duration::ZERO))
}

/// `Switchboard-Signature`: `t=<unix secs>,v1=<hex HMAC-SHA256(secret,
/// "<t>.<body>")>`, one `v1` per secret (during a rotation's grace period the
/// retired secret signs too, so an adapter may verify with either).
pub fn signature(secrets: &[&str], unix_secs: u64, body: &str) -> String {
    let mut out = format!("t={unix_secs}");
    for secret in secrets {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        let mut ctx = ring::hmac::Context::with_key(&key);
        ctx.update(unix_secs.to_string().as_bytes());
        ctx.update(b".");
        ctx.update(body.as_bytes());
        let tag = ctx.sign();
        out.push_str(",v1=");
        for b in tag.as_ref() {
            out.push_str(&format!("{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        // 2023-11-14T22:13:20Z is `now`; 90 s later:
        assert_eq!(
            retry_after("Tue, 14 Nov 2023 22:14:50 GMT", now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            retry_after("Tue, 14 Nov 2023 22:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date already past: no wait"
        );
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-5", now), None);
    }

    #[test]
    fn statuses_split_into_done_retry_dead() {
        assert_eq!(verdict(200, None), Verdict::Done);
        assert_eq!(verdict(204, None), Verdict::Done);
        for s in [408, 409, 429, 500, 502, 503] {
            assert!(matches!(verdict(s, None), Verdict::Retry { .. }), "{s}");
        }
        for s in [301, 400, 401, 403, 404, 410, 422] {
            assert_eq!(verdict(s, None), Verdict::Dead, "{s}");
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_honours_retry_after() {
        let base = Duration::from_millis(100);
        assert_eq!(backoff(1, base, None, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(3, base, None, 1.0), Duration::from_millis(400));
        assert_eq!(backoff(3, base, None, 0.0), Duration::from_millis(200));
        let after = Some(Duration::from_secs(2));
        assert_eq!(backoff(1, base, after, 0.5), Duration::from_secs(2));
        assert!(
            backoff(200, base, None, 1.0) > Duration::from_secs(1000),
            "no overflow"
        );
    }

    #[test]
    fn signature_is_hmac_sha256_of_time_dot_body() {
        // HMAC-SHA256("key", "1.{}"), as computed independently (Python hmac).
        let sig = signature(&["key"], 1, "{}");
        assert_eq!(
            sig,
            "t=1,v1=1ba6b8171186efc613e8bcc0cbdab2748f24984d7c5a84faa2637afa0e40d224"
        );
        assert_eq!(signature(&["a", "b"], 1, "x").matches(",v1=").count(), 2);
    }
}
