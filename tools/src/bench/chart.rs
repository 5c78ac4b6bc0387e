//! `syncline bench --chart out.svg`: throughput and latency per combination, side by side,
//! one row per transport/store combination.

use std::path::Path;

use anyhow::Context;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::Matrix;
use super::report::{Row, rows};

const THROUGHPUT: [(&str, RGBColor); 3] = [
    ("one-way", RGBColor(31, 119, 180)),
    ("both-ways", RGBColor(255, 127, 14)),
    ("catch-up", RGBColor(44, 160, 44)),
];
const LATENCY: [(&str, RGBColor); 2] = [
    ("p50", RGBColor(148, 103, 189)),
    ("p99", RGBColor(214, 39, 40)),
];

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

fn failed(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing the chart: {e}")
}

/// Rows on the y axis: one per combination, at least two (plotters cannot scale one).
fn slots(rows: &[Row<'_>]) -> usize {
    rows.len().max(2)
}

/// The label of row `y` (the first row at the top).
fn label(rows: &[Row<'_>], y: &SegmentValue<usize>) -> String {
    let SegmentValue::CenterOf(i) = *y else {
        return String::new();
    };
    slots(rows)
        .checked_sub(i + 1)
        .and_then(|k| rows.get(k))
        .map(|r| format!("{} / {}", r.transport, r.store))
        .unwrap_or_default()
}

/// A bar of row `i` (of `n`, the first at the top) from `x0` to `x1`: the `k`th of `of` bars
/// sharing the row, which is `row_px` pixels high.
fn bar<X: Copy>(
    (i, n): (usize, usize),
    (k, of): (usize, usize),
    (x0, x1): (X, X),
    row_px: u32,
    color: RGBColor,
) -> Rectangle<(X, SegmentValue<usize>)> {
    let slot = n - 1 - i;
    let pad = (row_px / 8).max(2);
    let each = (row_px.saturating_sub(2 * pad) / of as u32).max(1);
    let top = pad + k as u32 * each;
    let bottom = row_px.saturating_sub(top + each.saturating_sub(1));
    let mut r = Rectangle::new(
        [
            (x0, SegmentValue::Exact(slot + 1)),
            (x1, SegmentValue::Exact(slot)),
        ],
        color.filled(),
    );
    r.set_margin(top, bottom, 0, 0);
    r
}

/// Coloured squares with their names, in one line at the top of `area`.
fn legend(area: &Area<'_>, entries: &[(&str, RGBColor)]) -> anyhow::Result<()> {
    let mut x = 190;
    for (name, color) in entries {
        area.draw(&Rectangle::new([(x, 8), (x + 12, 20)], color.filled()))
            .map_err(failed)?;
        area.draw(&Text::new(*name, (x + 17, 7), ("sans-serif", 13)))
            .map_err(failed)?;
        x += 30 + 7 * name.len() as i32;
    }
    Ok(())
}

fn nothing(area: &Area<'_>, what: &str) -> anyhow::Result<()> {
    area.draw(&Text::new(
        format!("no {what} in this run"),
        (200, 60),
        ("sans-serif", 14),
    ))
    .map_err(failed)?;
    Ok(())
}

fn throughput(area: &Area<'_>, rows: &[Row<'_>]) -> anyhow::Result<()> {
    let (top, body) = area.split_vertically(28);
    legend(&top, &THROUGHPUT)?;
    let n = slots(rows);
    let max = rows
        .iter()
        .flat_map(|r| THROUGHPUT.iter().filter_map(|(w, _)| r.get(w)))
        .map(|r| r.ops_per_sec / 1e3)
        .fold(0.0f64, f64::max);
    if max <= 0.0 {
        return nothing(&body, "throughput workloads");
    }
    let mut chart = ChartBuilder::on(&body)
        .margin_right(16)
        .x_label_area_size(40)
        .y_label_area_size(170)
        .build_cartesian_2d(0f64..max * 1.05, (0..n - 1).into_segmented())
        .map_err(failed)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|y| label(rows, y))
        .x_labels(8)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .x_desc("thousands of operations per second")
        .draw()
        .map_err(failed)?;
    let row_px = chart.plotting_area().dim_in_pixel().1 / n as u32;
    for (k, (workload, color)) in THROUGHPUT.iter().enumerate() {
        chart
            .draw_series(rows.iter().enumerate().filter_map(|(i, row)| {
                let v = row.get(workload)?.ops_per_sec / 1e3;
                Some(bar((i, n), (k, THROUGHPUT.len()), (0.0, v), row_px, *color))
            }))
            .map_err(failed)?;
    }
    Ok(())
}

fn latency(area: &Area<'_>, rows: &[Row<'_>]) -> anyhow::Result<()> {
    let (top, body) = area.split_vertically(28);
    legend(&top, &LATENCY)?;
    let n = slots(rows);
    let lat: Vec<(usize, f64, f64)> = rows
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let s = r.get("steady")?;
            Some((i, s.p50_us? as f64 / 1e3, s.p99_us? as f64 / 1e3))
        })
        .collect();
    if lat.is_empty() {
        return nothing(&body, "steady workload");
    }
    let hi = lat.iter().map(|l| l.2).fold(0.0f64, f64::max) * 1.5;
    let lo = lat.iter().map(|l| l.1).fold(f64::INFINITY, f64::min) / 3.0;
    let mut chart = ChartBuilder::on(&body)
        .margin_right(16)
        .x_label_area_size(40)
        .y_label_area_size(8)
        .build_cartesian_2d((lo..hi).log_scale(), (0..n - 1).into_segmented())
        .map_err(failed)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|_| String::new())
        .x_labels(6)
        .x_label_formatter(&|x| {
            if *x >= 1.0 {
                format!("{x:.0}")
            } else if *x >= 0.1 {
                format!("{x:.1}")
            } else {
                format!("{x:.2}")
            }
        })
        .x_desc("push-to-applied latency at the steady rate, ms (log scale)")
        .draw()
        .map_err(failed)?;
    let row_px = chart.plotting_area().dim_in_pixel().1 / n as u32;
    for (k, (_, color)) in LATENCY.iter().enumerate() {
        chart
            .draw_series(lat.iter().map(|&(i, p50, p99)| {
                let v = if k == 0 { p50 } else { p99 };
                bar((i, n), (k, LATENCY.len()), (lo, v), row_px, *color)
            }))
            .map_err(failed)?;
    }
    Ok(())
}

/// Writes the chart of `m` to `path` (SVG).
pub(crate) fn draw(m: &Matrix, path: &Path) -> anyhow::Result<()> {
    let rows = rows(m);
    if rows.is_empty() {
        anyhow::bail!("the matrix has no runs to draw");
    }
    let height = rows.len() as u32 * 36 + 130;
    let root = SVGBackend::new(path, (1300, height)).into_drawing_area();
    root.fill(&WHITE).map_err(failed)?;
    let title = format!(
        "syncline bench: {} operations per throughput run, steady {} ops/s; {} × {}",
        m.ops, m.steady.0, m.machine.cpus, m.machine.cpu
    );
    let root = root.titled(&title, ("sans-serif", 17)).map_err(failed)?;
    let (left, right) = root.split_horizontally(760);
    throughput(&left, &rows)?;
    latency(&right, &rows)?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
