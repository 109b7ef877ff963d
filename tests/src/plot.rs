//! Pictures of what a client saw: who answered it over time, with each fault and the gap it
//! caused marked, as SVG.

use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;

/// Now, in Unix microseconds.
pub fn unix_micros() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

/// Where a picture of a run goes: `target/<name>` in the checkout.
pub fn picture_path(name: &str) -> std::path::PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")).join(name)
}

/// A change of who answers the client: Unix time in microseconds, and the node (None: nobody).
pub type Sample = (u128, Option<String>);

/// A fault: when it happened (Unix microseconds), what it was, and how long the client then
/// went without an answer from another node.
#[derive(Debug, Clone)]
pub struct Fault {
    pub at_us: u128,
    pub what: String,
    pub gap: Duration,
}

/// Draws `samples` as a step line over `nodes` (and "no answer" below them), each fault a red
/// band from the fault to the first answer after it, labelled with the gap.
pub fn timeline(
    path: &Path,
    title: &str,
    nodes: &[&str],
    samples: &[Sample],
    faults: &[Fault],
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let Some(&(t0, _)) = samples.first() else {
        return Err(err(&"no samples"));
    };
    let end = samples.last().map_or(t0, |s| s.0);
    let secs = |t: u128| t.saturating_sub(t0) as f64 / 1e6;
    let x_max = secs(end).max(0.1) * 1.02;
    let level = |n: &Option<String>| -> f64 {
        n.as_ref()
            .and_then(|n| nodes.iter().position(|m| m == n))
            .map_or(0.0, |i| (i + 1) as f64)
    };
    let top = nodes.len() as f64 + 0.8;

    let root = SVGBackend::new(path, (1200, 360)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(90)
        .build_cartesian_2d(0f64..x_max, -0.5f64..top)
        .map_err(|e| err(&e))?;
    let names: Vec<String> = std::iter::once("no answer".to_string())
        .chain(nodes.iter().map(|n| n.to_string()))
        .collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(names.len() * 2 + 2)
        .y_label_formatter(&|y| {
            let i = y.round();
            if (y - i).abs() < 1e-6 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_desc("seconds")
        .y_desc("answered by")
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(faults.iter().map(|f| {
            let x0 = secs(f.at_us);
            let x1 = x0 + f.gap.as_secs_f64();
            Rectangle::new(
                [(x0, -0.5), (x1.max(x0 + x_max / 600.0), top)],
                RED.mix(0.25).filled(),
            )
        }))
        .map_err(|e| err(&e))?;
    let mut steps = Vec::with_capacity(samples.len() * 2);
    let mut last = None;
    for (t, who) in samples {
        let y = level(who);
        if let Some(prev) = last {
            steps.push((secs(*t), prev));
        }
        steps.push((secs(*t), y));
        last = Some(y);
    }
    chart
        .draw_series(LineSeries::new(steps, BLUE.stroke_width(2)))
        .map_err(|e| err(&e))?;
    chart
        .draw_series(faults.iter().enumerate().map(|(i, f)| {
            // Labels alternate between two heights so that close faults stay readable.
            let y = top - 0.25 - 0.3 * (i % 2) as f64;
            Text::new(
                format!("{} {} ms", f.what, f.gap.as_millis()),
                (secs(f.at_us), y),
                ("sans-serif", 12).into_font().color(&RED),
            )
        }))
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}
