//! The picture: median throughput of every row (log scale, so that the Python baseline
//! and our pipeline fit on one axis) and the paced row's latency percentiles, drawn with
//! plotters' SVG backend (no fonts or system libraries needed).

use anyhow::{anyhow, Result};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use crate::summary::Row;

const WIDTH: u32 = 960;
const ROW_H: u32 = 28;

fn color(group: &str) -> RGBColor {
    match group {
        "pipeline" => RGBColor(0x2b, 0x6c, 0xb0),
        "payload" => RGBColor(0xdd, 0x6b, 0x20),
        "devices" => RGBColor(0x38, 0xa1, 0x69),
        "latency" => RGBColor(0x80, 0x5a, 0xd5),
        "storage" => RGBColor(0xc5, 0x30, 0x30),
        _ => RGBColor(0x71, 0x80, 0x96),
    }
}

/// An SVG document for `rows`, titled `title`.
pub fn svg(rows: &[Row], title: &str) -> Result<String> {
    let measured: Vec<(&Row, f64)> = rows
        .iter()
        .filter_map(|r| Some((r, r.median.as_ref()?.msgs_per_s)))
        .collect();
    let latency = rows
        .iter()
        .find_map(|r| r.median.as_ref()?.latency_us.map(|l| (r, l)));
    let bars_h = 110 + ROW_H * measured.len().max(1) as u32;
    let latency_h = if latency.is_some() { 220 } else { 0 };
    let mut out = String::new();
    {
        let root =
            SVGBackend::with_string(&mut out, (WIDTH, bars_h + latency_h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let (top, bottom) = root.split_vertically(bars_h);
        throughput(&top, &measured, title).map_err(|e| anyhow!("{e}"))?;
        if let Some((row, l)) = latency {
            let values = [
                ("p50", l.p50),
                ("p90", l.p90),
                ("p99", l.p99),
                ("p99.9", l.p999),
                ("max", l.max),
            ];
            let caption = format!(
                "Latency, {} (intended send time to arrival), ms",
                row.scenario.name
            );
            latency_bars(&bottom, &values, &caption).map_err(|e| anyhow!("{e}"))?;
        }
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    Ok(out)
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type DrawResult = std::result::Result<(), DrawingAreaErrorKind<std::io::Error>>;

/// Horizontal bars of median msg/s on a log axis from 10^2 up.
fn throughput(area: &Area, measured: &[(&Row, f64)], title: &str) -> DrawResult {
    let max = measured.iter().map(|(_, v)| *v).fold(1000.0_f64, f64::max);
    let hi = 10f64.powf(max.log10().ceil() + 0.3);
    let labels: Vec<String> = measured
        .iter()
        .map(|(r, _)| {
            let s = &r.scenario;
            format!("{}: {} (N={})", s.group, s.name, s.messages)
        })
        .collect();
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(360)
        .build_cartesian_2d(
            (100f64..hi).log_scale(),
            (0..measured.len()).into_segmented(),
        )?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(measured.len())
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc("median verified msg/s, end to end (log scale); QoS 1")
        .label_style(("sans-serif", 11))
        .draw()?;
    chart.draw_series(measured.iter().enumerate().map(|(i, (row, v))| {
        let mut bar = Rectangle::new(
            [
                (100.0, SegmentValue::Exact(i)),
                (*v, SegmentValue::Exact(i + 1)),
            ],
            color(row.scenario.group).filled(),
        );
        bar.set_margin(3, 3, 0, 0);
        bar
    }))?;
    chart.draw_series(measured.iter().enumerate().map(|(i, (row, v))| {
        let mark = if row.all_complete {
            ""
        } else {
            " (NOT verified)"
        };
        Text::new(
            format!("{v:.0}{mark}"),
            (*v * 1.05, SegmentValue::CenterOf(i)),
            ("sans-serif", 11),
        )
    }))?;
    Ok(())
}

/// The paced row's latency percentiles, in ms.
fn latency_bars(area: &Area, values: &[(&str, u64)], caption: &str) -> DrawResult {
    let max_ms = values.iter().map(|(_, v)| *v).max().unwrap_or(1).max(1) as f64 / 1000.0;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 14))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(360)
        .build_cartesian_2d(0f64..max_ms * 1.2, (0..values.len()).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(values.len())
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => values.get(*i).map_or("", |(n, _)| n).to_owned(),
            _ => String::new(),
        })
        .x_desc("ms")
        .draw()?;
    let purple = color("latency");
    chart.draw_series(values.iter().enumerate().map(|(i, (_, v))| {
        let mut bar = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(i)),
                (*v as f64 / 1000.0, SegmentValue::Exact(i + 1)),
            ],
            purple.filled(),
        );
        bar.set_margin(3, 3, 0, 0);
        bar
    }))?;
    chart.draw_series(values.iter().enumerate().map(|(i, (_, v))| {
        let ms = *v as f64 / 1000.0;
        Text::new(
            format!("{ms:.3}"),
            (ms + max_ms * 0.01, SegmentValue::CenterOf(i)),
            ("sans-serif", 11),
        )
    }))?;
    Ok(())
}
