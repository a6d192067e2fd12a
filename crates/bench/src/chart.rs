//! The pictures, drawn with plotters' SVG backend (no fonts or system libraries needed):
//! median throughput of every row (log scale, so that the Python baseline and our
//! pipeline fit on one axis), and the latency rows' percentile distributions.

use anyhow::{anyhow, Result};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use crate::scenario::{latency_label, BrokerKind};
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

/// An SVG document for `rows`, titled `title`: median throughput of every row.
pub fn svg(rows: &[Row], title: &str) -> Result<String> {
    let measured: Vec<(&Row, f64)> = rows
        .iter()
        .filter_map(|r| Some((r, r.median.as_ref()?.msgs_per_s)))
        .collect();
    let height = 110 + ROW_H * measured.len().max(1) as u32;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        throughput(&root, &measured, title).map_err(|e| anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    Ok(out)
}

/// The latency rows' percentile distributions (the usual HdrHistogram plot: latency
/// against percentile, the percentile axis logarithmic in 1 / (1 - p) so that the tail
/// gets room), one panel per rate with a line per broker; `None` without latency rows.
pub fn latency_svg(rows: &[Row], title: &str) -> Result<Option<String>> {
    let mut panels: Vec<(u64, Vec<Line>)> = Vec::new();
    for row in rows {
        let (Some(rate), Some(latency)) = (
            row.scenario.paced_rate,
            row.median.as_ref().and_then(|m| m.latency.as_ref()),
        ) else {
            continue;
        };
        // The 100th percentile (the maximum) sits at infinity on this axis: left out.
        let points: Vec<(f64, f64)> = latency
            .latency_percentiles_us
            .iter()
            .filter(|p| p.percentile < 100.0)
            .map(|p| (1.0 / (1.0 - p.percentile / 100.0), p.us.max(1) as f64))
            .collect();
        if points.is_empty() {
            continue;
        }
        match panels.iter_mut().find(|(r, _)| *r == rate) {
            Some((_, lines)) => lines.push((row, points)),
            None => panels.push((rate, vec![(row, points)])),
        }
    }
    if panels.is_empty() {
        return Ok(None);
    }
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let root = root
            .titled(
                &format!("{title}: latency by percentile (intended send time to arrival)"),
                ("sans-serif", 16),
            )
            .map_err(|e| anyhow!("{e}"))?;
        let areas = root.split_evenly((1, panels.len()));
        for (area, (rate, lines)) in areas.iter().zip(&panels) {
            percentile_panel(area, *rate, lines).map_err(|e| anyhow!("{e}"))?;
        }
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    Ok(Some(out))
}

/// One broker's line in a percentile panel: (percentile axis position, µs) points.
type Line<'a> = (&'a Row, Vec<(f64, f64)>);

/// A broker's line colour in the latency chart.
fn broker_color(row: &Row) -> RGBColor {
    match row.scenario.broker {
        BrokerKind::Ours | BrokerKind::OursWebSocket => RGBColor(0x2b, 0x6c, 0xb0),
        BrokerKind::Rumqttd => RGBColor(0xdd, 0x6b, 0x20),
        BrokerKind::Mosquitto => RGBColor(0x38, 0xa1, 0x69),
        BrokerKind::NatsCluster => RGBColor(0x71, 0x80, 0x96),
    }
}

/// "99.9%" for the axis position 1 / (1 - 0.999).
fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 1.0 / x);
    let digits = (x.log10().round() as usize).saturating_sub(2);
    format!("{p:.digits$}%")
}

fn percentile_panel(area: &Area, rate: u64, lines: &[Line]) -> DrawResult {
    let x_max = lines
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|p| p.0))
        .fold(10.0_f64, f64::max);
    let x_hi = 10f64.powf(x_max.log10().ceil());
    let (y_lo, y_hi) = lines
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|p| p.1))
        .fold((f64::MAX, 1.0_f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let y_lo = 10f64.powf(y_lo.log10().floor());
    let y_hi = 10f64.powf(y_hi.log10().ceil());
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{rate} msg/s"), ("sans-serif", 14))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((1f64..x_hi).log_scale(), (y_lo..y_hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("µs")
        .x_label_formatter(&|x| percentile_label(*x))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 10))
        .draw()?;
    for (row, points) in lines {
        let color = broker_color(row);
        let label = latency_label(row.scenario.broker);
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 10))
        .draw()?;
    Ok(())
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
