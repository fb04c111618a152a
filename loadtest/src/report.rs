//! Report pieces: latency summaries, the run's environment, and a hand-written
//! SVG line chart (no plotting dependency; opens in any browser).

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Percentiles of a latency histogram (µs values), in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct LatencyMs {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

impl LatencyMs {
    pub fn of(h: &Histogram<u64>) -> LatencyMs {
        if h.is_empty() {
            return LatencyMs::default();
        }
        let ms = |v: u64| (v as f64 / 1000.0 * 1000.0).round() / 1000.0;
        LatencyMs {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p99_9: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// Versions and machine facts for the report.
pub fn environment(gateway_bin: Option<&std::path::Path>) -> serde_json::Value {
    use crate::procs::version_of;
    let git = |args: &[&str]| version_of("git", args);
    serde_json::json!({
        "loadtest": env!("CARGO_PKG_VERSION"),
        "switchboard": gateway_bin
            .and_then(|b| version_of(&b.display().to_string(), &["--version"])),
        "rustc": version_of("rustc", &["--version"]),
        "node": version_of("node", &["--version"]),
        "redis_server": version_of("redis-server", &["--version"]),
        "kernel": version_of("uname", &["-sr"]),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "git_commit": git(&["rev-parse", "HEAD"]),
        "git_dirty": git(&["status", "--porcelain", "--untracked-files=no"]).is_some(),
    })
}

#[derive(Clone, Debug)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub color: &'static str,
    pub dash: Dash,
}

/// Line style: one per system in a comparison chart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dash {
    Solid,
    Dashed,
    Dotted,
}

impl Dash {
    fn attr(self) -> &'static str {
        match self {
            Dash::Solid => "",
            Dash::Dashed => r#" stroke-dasharray="7 4""#,
            Dash::Dotted => r#" stroke-dasharray="2 3""#,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Chart {
    pub title: String,
    pub subtitle: String,
    pub x_label: String,
    pub y_label: String,
    pub x_log: bool,
    pub y_log: bool,
    pub series: Vec<Series>,
    /// A horizontal reference line (value, label), e.g. the 50 ms objective.
    pub hline: Option<(f64, String)>,
}

pub const COLORS: [&str; 6] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Tick values for an axis.
fn ticks(lo: f64, hi: f64, log: bool) -> Vec<f64> {
    if log {
        let mut out = Vec::new();
        let mut decade = 10f64.powf(lo.log10().floor());
        while decade <= hi * 1.0001 {
            for m in [1.0, 2.0, 5.0] {
                let v = decade * m;
                if v >= lo * 0.9999 && v <= hi * 1.0001 {
                    out.push(v);
                }
            }
            decade *= 10.0;
        }
        out
    } else {
        let span = (hi - lo).max(1e-9);
        let raw = span / 6.0;
        let mag = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 5.0, 10.0]
            .iter()
            .map(|m| m * mag)
            .find(|s| span / s <= 7.0)
            .unwrap_or(mag * 10.0);
        let mut v = (lo / step).ceil() * step;
        let mut out = Vec::new();
        while v <= hi + step * 1e-6 {
            out.push(v);
            v += step;
        }
        out
    }
}

fn fmt_tick(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if v >= 1e4 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

impl Chart {
    pub fn render(&self) -> String {
        let (w, h) = (960.0, 560.0);
        let (left, right, top, bottom) = (80.0, 220.0, 70.0, 60.0);
        let pw = w - left - right;
        let ph = h - top - bottom;
        let pts: Vec<(f64, f64)> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .filter(|(x, y)| (!self.x_log || *x > 0.0) && (!self.y_log || *y > 0.0))
            .collect();
        let mut ys: Vec<f64> = pts.iter().map(|p| p.1).collect();
        if let Some((v, _)) = &self.hline {
            ys.push(*v);
        }
        let (mut x0, mut x1) = minmax(pts.iter().map(|p| p.0));
        let (mut y0, mut y1) = minmax(ys.into_iter());
        if self.x_log {
            x0 = 10f64.powf(x0.max(1e-9).log10().floor());
            x1 = 10f64.powf(x1.max(1e-9).log10().ceil());
        } else {
            x0 = x0.min(0.0);
            x1 = if x1 <= x0 { x0 + 1.0 } else { x1 * 1.05 };
        }
        if self.y_log {
            y0 = 10f64.powf(y0.max(1e-3).log10().floor());
            y1 = 10f64.powf(y1.max(1e-3).log10().ceil());
            if y1 <= y0 {
                y1 = y0 * 10.0;
            }
        } else {
            y0 = y0.min(0.0);
            y1 = if y1 <= y0 { y0 + 1.0 } else { y1 * 1.1 };
        }
        let fx = |x: f64| {
            let t = if self.x_log {
                (x.log10() - x0.log10()) / (x1.log10() - x0.log10())
            } else {
                (x - x0) / (x1 - x0)
            };
            left + t * pw
        };
        let fy = |y: f64| {
            let t = if self.y_log {
                (y.log10() - y0.log10()) / (y1.log10() - y0.log10())
            } else {
                (y - y0) / (y1 - y0)
            };
            top + ph - t * ph
        };
        let mut s = String::new();
        let _ = write!(
            s,
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="Helvetica, Arial, sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{left}" y="28" font-size="18" font-weight="bold">{}</text>
<text x="{left}" y="48" fill="#444">{}</text>
"##,
            esc(&self.title),
            esc(&self.subtitle)
        );
        for t in ticks(x0, x1, self.x_log) {
            let x = fx(t);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#e5e5e5"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                top + ph,
                top + ph + 18.0,
                fmt_tick(t)
            );
        }
        for t in ticks(y0, y1, self.y_log) {
            let y = fy(t);
            let _ = writeln!(
                s,
                r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                left + pw,
                left - 6.0,
                y + 4.0,
                fmt_tick(t)
            );
        }
        let _ = writeln!(
            s,
            r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>
<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>
<text transform="translate(22 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"##,
            left + pw / 2.0,
            h - 18.0,
            esc(&self.x_label),
            top + ph / 2.0,
            esc(&self.y_label)
        );
        if let Some((v, label)) = &self.hline {
            if *v >= y0 && *v <= y1 {
                let y = fy(*v);
                let _ = writeln!(
                    s,
                    r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#d62728" stroke-width="1.5" stroke-dasharray="2 3"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#d62728">{}</text>"##,
                    left + pw,
                    left + pw - 4.0,
                    y - 5.0,
                    esc(label)
                );
            }
        }
        for (i, se) in self.series.iter().enumerate() {
            let valid: Vec<(f64, f64)> = se
                .points
                .iter()
                .copied()
                .filter(|(x, y)| {
                    x.is_finite()
                        && y.is_finite()
                        && (!self.x_log || *x > 0.0)
                        && (!self.y_log || *y > 0.0)
                })
                .collect();
            let dash = se.dash.attr();
            if valid.len() > 1 {
                let path: Vec<String> = valid
                    .iter()
                    .map(|&(x, y)| format!("{:.1},{:.1}", fx(x), fy(y)))
                    .collect();
                let _ = writeln!(
                    s,
                    r#"<polyline fill="none" stroke="{}" stroke-width="2"{dash} points="{}"/>"#,
                    se.color,
                    path.join(" ")
                );
            }
            if valid.len() <= 60 {
                for &(x, y) in &valid {
                    let _ = writeln!(
                        s,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"><title>{}: {} → {}</title></circle>"#,
                        fx(x),
                        fy(y),
                        se.color,
                        esc(&se.label),
                        trim(x),
                        trim(y)
                    );
                }
            }
            let ly = top + 10.0 + i as f64 * 20.0;
            let lx = left + pw + 16.0;
            let _ = writeln!(
                s,
                r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
                lx + 26.0,
                se.color,
                lx + 32.0,
                ly + 4.0,
                esc(&se.label)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

fn minmax(it: impl Iterator<Item = f64>) -> (f64, f64) {
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for v in it {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo.is_finite() {
        (lo, hi)
    } else {
        (1.0, 10.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_summary_in_ms() {
        let mut h = crate::check::new_hist();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap();
        }
        let l = LatencyMs::of(&h);
        assert_eq!(l.count, 1000);
        assert!((l.p50 - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.p99 - 990.0).abs() < 2.0, "{l:?}");
        assert!(l.max >= 999.0);
        assert_eq!(
            LatencyMs::of(&crate::check::new_hist()),
            LatencyMs::default()
        );
    }

    #[test]
    fn ticks_are_sane() {
        assert_eq!(
            ticks(1.0, 100.0, true),
            vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
        );
        let lin = ticks(0.0, 100.0, false);
        assert_eq!(lin.first(), Some(&0.0));
        assert!(lin.len() >= 4 && lin.len() <= 8, "{lin:?}");
        assert_eq!(fmt_tick(20000.0), "20k");
        assert_eq!(fmt_tick(2.5), "2.5");
    }

    #[test]
    fn chart_renders_svg_with_every_series() {
        let c = Chart {
            title: "Latency <vs> rate".into(),
            subtitle: "test".into(),
            x_label: "offered msgs/s".into(),
            y_label: "ms".into(),
            x_log: true,
            y_log: true,
            series: vec![
                Series {
                    label: "p50".into(),
                    points: vec![(100.0, 1.0), (1000.0, 3.0)],
                    color: COLORS[0],
                    dash: Dash::Solid,
                },
                Series {
                    label: "peer p99".into(),
                    points: vec![(100.0, 4.0), (1000.0, 0.0)],
                    color: COLORS[1],
                    dash: Dash::Dashed,
                },
            ],
            hline: Some((50.0, "p99 objective 50 ms".into())),
        };
        let svg = c.render();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("Latency &lt;vs&gt; rate"));
        assert!(svg.contains("peer p99") && svg.contains("p99 objective"));
        assert_eq!(svg.matches("<polyline").count(), 1); // the zero point is dropped on a log axis
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }
}
