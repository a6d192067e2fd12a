//! The picture: median throughput of every row (log scale, so that the Python baseline
//! and our pipeline fit on one axis) and the paced row's latency percentiles. Written
//! as plain SVG, which needs no fonts or system libraries to produce.

use std::fmt::Write as _;

use crate::summary::Row;

const WIDTH: f64 = 960.0;
const LABEL_W: f64 = 330.0;
const BAR_H: f64 = 22.0;
const COLORS: [&str; 5] = ["#2b6cb0", "#dd6b20", "#718096", "#38a169", "#805ad5"];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn color(group: &str) -> &'static str {
    match group {
        "pipeline" => COLORS[0],
        "payload" => COLORS[1],
        "devices" => COLORS[3],
        "latency" => COLORS[4],
        _ => COLORS[2],
    }
}

/// An SVG document for `rows`, titled `title`.
pub fn svg(rows: &[Row], title: &str) -> String {
    let measured: Vec<&Row> = rows.iter().filter(|r| r.median.is_some()).collect();
    let latency = rows
        .iter()
        .find_map(|r| r.median.as_ref()?.latency_us.map(|l| (r, l)));
    let top = 60.0;
    let bars_h = measured.len() as f64 * (BAR_H + 6.0);
    let lat_top = top + bars_h + 70.0;
    let height = lat_top + if latency.is_some() { 190.0 } else { 0.0 };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="24" font-size="16" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let _ = writeln!(
        s,
        r##"<text x="10" y="44" fill="#555">Median verified msg/s, end to end (log scale); QoS 1</text>"##
    );

    for (i, group) in ["pipeline", "payload", "devices", "latency", "linearity"]
        .iter()
        .enumerate()
    {
        let lx = 560.0 + i as f64 * 80.0;
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="34" width="10" height="10" fill="{}"/><text x="{:.1}" y="44">{group}</text>"#,
            color(group),
            lx + 14.0
        );
    }

    // Throughput bars on a log10 axis from 10^2 to the next power of ten above the max.
    let max = measured
        .iter()
        .filter_map(|r| r.median.as_ref().map(|m| m.msgs_per_s))
        .fold(1000.0_f64, f64::max);
    let (lo, hi) = (2.0, max.log10().ceil().max(3.0));
    let plot_w = WIDTH - LABEL_W - 90.0;
    let x = |v: f64| LABEL_W + (v.max(100.0).log10() - lo) / (hi - lo) * plot_w;
    for p in (lo as u32)..=(hi as u32) {
        let gx = x(10f64.powi(p as i32));
        let _ = writeln!(
            s,
            r##"<line x1="{gx:.1}" y1="{top}" x2="{gx:.1}" y2="{:.1}" stroke="#ddd"/><text x="{gx:.1}" y="{:.1}" text-anchor="middle" fill="#555">10^{p}</text>"##,
            top + bars_h,
            top + bars_h + 16.0
        );
    }
    for (i, row) in measured.iter().enumerate() {
        let Some(m) = &row.median else { continue };
        let y = top + i as f64 * (BAR_H + 6.0);
        let w = (x(m.msgs_per_s) - LABEL_W).max(1.0);
        let label = format!(
            "{}: {} (N={})",
            row.scenario.group, row.scenario.name, row.scenario.messages
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LABEL_W - 8.0,
            y + BAR_H * 0.7,
            escape(&label)
        );
        let _ = writeln!(
            s,
            r#"<rect x="{LABEL_W}" y="{y:.1}" width="{w:.1}" height="{BAR_H}" fill="{}"/>"#,
            color(row.scenario.group)
        );
        let mark = if row.all_complete {
            ""
        } else {
            " (NOT verified)"
        };
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{:.0}{mark}</text>"#,
            LABEL_W + w + 6.0,
            y + BAR_H * 0.7,
            m.msgs_per_s
        );
    }

    if let Some((row, l)) = latency {
        let _ = writeln!(
            s,
            r#"<text x="10" y="{:.1}" font-size="14" font-weight="bold">Latency, {} (intended send time to arrival), ms</text>"#,
            lat_top - 20.0,
            escape(&row.scenario.name)
        );
        let values = [
            ("p50", l.p50),
            ("p90", l.p90),
            ("p99", l.p99),
            ("p99.9", l.p999),
            ("max", l.max),
        ];
        let lmax = values.iter().map(|(_, v)| *v).max().unwrap_or(1).max(1) as f64;
        for (i, (name, v)) in values.iter().enumerate() {
            let y = lat_top + i as f64 * (BAR_H + 6.0);
            let w = (*v as f64 / lmax * plot_w).max(1.0);
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{name}</text><rect x="{LABEL_W}" y="{y:.1}" width="{w:.1}" height="{BAR_H}" fill="{}"/><text x="{:.1}" y="{:.1}">{:.3}</text>"#,
                LABEL_W - 8.0,
                y + BAR_H * 0.7,
                COLORS[4],
                LABEL_W + w + 6.0,
                y + BAR_H * 0.7,
                *v as f64 / 1000.0
            );
        }
    }
    s.push_str("</svg>\n");
    s
}
