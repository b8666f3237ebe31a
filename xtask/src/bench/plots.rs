//! PNG plots with plotters' bitmap backend. Text is drawn by ab_glyph from the
//! DejaVu Sans bytes embedded by the `dejavu` crate, so no system font and no
//! fontconfig is needed (plotters' default `ttf` feature would load system fonts
//! through font-kit and fontconfig).

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::report::Row;

const FONT: &str = "sans-serif";
const COLORS: [RGBColor; 3] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
];

fn register_font() -> Result<()> {
    plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| anyhow!("the embedded DejaVu Sans is not a usable font"))
}

/// `throughput.png` (closed-loop req/s per setup and protocol, connections/s with a
/// new connection per request, and TCP Gbit/s) and
/// `latency.png` (p50/p99/p99.9 per setup at each fixed rate and protocol).
pub fn draw(dir: &Path, rows: &[Row]) -> Result<()> {
    register_font()?;
    let setups = setup_names(rows);
    let get = |setup: &str, proto: &str, load: &str, f: fn(&Row) -> Option<f64>| {
        rows.iter()
            .find(|r| r.setup == setup && r.protocol == proto && r.load == load && r.available)
            .and_then(f)
    };

    let path = dir.join("throughput.png");
    // Room for six setup names under each chart.
    let root = BitMapBackend::new(&path, (1900, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let (left, right) = root.split_horizontally(1100);
    let mut rps: Vec<(&str, Vec<Option<f64>>)> = [("HTTP/1.1", "http1"), ("h2c", "h2")]
        .iter()
        .map(|(label, proto)| {
            (
                *label,
                setups
                    .iter()
                    .map(|s| get(s, proto, "max", |r| r.rps))
                    .collect(),
            )
        })
        .collect();
    rps.push((
        "HTTP/1.1, new connection per request (conn/s)",
        setups
            .iter()
            .map(|s| get(s, "http1", "conn", |r| r.conn_per_s))
            .collect(),
    ));
    grouped_bars(
        &left,
        "Max throughput (closed loop)",
        "req/s",
        &setups,
        &rps,
        false,
    )?;
    let tcp = vec![(
        "TCP (iperf3)",
        setups
            .iter()
            .map(|s| get(s, "tcp", "bulk", |r| r.gbit_s))
            .collect(),
    )];
    grouped_bars(
        &right,
        "TCP bulk throughput",
        "Gbit/s",
        &setups,
        &tcp,
        false,
    )?;
    root.present().map_err(plot_err)?;

    let loads: Vec<(String, &str, String)> = ["http1", "h2"]
        .iter()
        .flat_map(|proto| {
            rows.iter()
                .filter(move |r| r.protocol == *proto && r.rate.is_some())
                .map(|r| {
                    (
                        r.load.clone(),
                        *proto,
                        format!("{} at {}", label(proto), r.load),
                    )
                })
                .collect::<Vec<_>>()
        })
        .fold(Vec::new(), |mut acc, item| {
            if !acc.contains(&item) {
                acc.push(item);
            }
            acc
        });
    let path = dir.join("latency.png");
    let cols = 2;
    let rows_n = loads.len().div_ceil(cols).max(1);
    let root = BitMapBackend::new(&path, (1700, 380 * rows_n as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let panels = root.split_evenly((rows_n, cols));
    for ((load, proto, title), area) in loads.iter().zip(panels.iter()) {
        let series: Vec<(&str, Vec<Option<f64>>)> = vec![
            (
                "p50",
                setups
                    .iter()
                    .map(|s| get(s, proto, load, |r| r.p50_ms))
                    .collect(),
            ),
            (
                "p99",
                setups
                    .iter()
                    .map(|s| get(s, proto, load, |r| r.p99_ms))
                    .collect(),
            ),
            (
                "p99.9",
                setups
                    .iter()
                    .map(|s| get(s, proto, load, |r| r.p999_ms))
                    .collect(),
            ),
        ];
        grouped_bars(
            area,
            &format!("Latency, {title} (open loop, log scale)"),
            "ms",
            &setups,
            &series,
            true,
        )?;
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

fn label(proto: &str) -> &str {
    match proto {
        "http1" => "HTTP/1.1",
        "h2" => "h2c",
        other => other,
    }
}

fn setup_names(rows: &[Row]) -> Vec<String> {
    let mut s: Vec<String> = Vec::new();
    for r in rows {
        if !s.contains(&r.setup) {
            s.push(r.setup.clone());
        }
    }
    s
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e:?}")
}

/// Bars grouped by category (setup), one colour per series; a missing value leaves
/// its bar out and the category is labelled "n/a". With `log`, the y axis is
/// logarithmic (latency percentiles a hundredfold apart stay readable).
fn grouped_bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    y_label: &str,
    categories: &[String],
    series: &[(&str, Vec<Option<f64>>)],
    log: bool,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let n = categories.len().max(1);
    let values = || {
        series
            .iter()
            .flat_map(|(_, v)| v.iter().flatten())
            .copied()
            .filter(|x| x.is_finite() && *x > 0.0)
    };
    let top = values().fold(0.0f64, f64::max).max(1e-9);
    let names = categories.to_vec();
    let missing: Vec<bool> = (0..n)
        .map(|i| {
            series
                .iter()
                .all(|(_, v)| v.get(i).copied().flatten().is_none())
        })
        .collect();
    let x_label = |x: &f64| {
        let i = x.round();
        if (x - i).abs() > 1e-6 || i < 0.0 {
            return String::new();
        }
        let i = i as usize;
        match names.get(i) {
            Some(name) if missing.get(i) == Some(&true) => format!("{name} (n/a)"),
            Some(name) => name.clone(),
            None => String::new(),
        }
    };
    let y_fmt = |y: &f64| {
        if *y >= 100.0 {
            format!("{y:.0}")
        } else if *y >= 1.0 {
            format!("{y:.1}")
        } else {
            format!("{y:.2}")
        }
    };
    let x_range = -0.5f64..(n as f64 - 0.5);
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70);
    let k = series.len().max(1) as f64;
    let width = 0.8 / k;
    let bar = |i: usize, j: usize, base: f64, v: f64| {
        let x0 = i as f64 - 0.4 + j as f64 * width;
        [(x0, base), (x0 + width * 0.92, v)]
    };
    macro_rules! finish {
        ($chart:expr, $base:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(n)
                .x_label_formatter(&x_label)
                .y_label_formatter(&y_fmt)
                .y_desc(y_label)
                .label_style((FONT, 13))
                .axis_desc_style((FONT, 14))
                .draw()
                .map_err(plot_err)?;
            for (j, (name, values)) in series.iter().enumerate() {
                let color = COLORS[j % COLORS.len()];
                let bars = values.iter().enumerate().filter_map(|(i, v)| {
                    let v = (*v)?;
                    Some(Rectangle::new(
                        bar(i, j, $base, v.max($base)),
                        color.filled(),
                    ))
                });
                chart
                    .draw_series(bars)
                    .map_err(plot_err)?
                    .label(*name)
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                    });
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font((FONT, 13))
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .map_err(plot_err)?;
        }};
    }
    if log {
        let bottom = values().fold(f64::INFINITY, f64::min).min(top) / 2.0;
        let chart = builder
            .build_cartesian_2d(x_range, (bottom..top * 4.0).log_scale())
            .map_err(plot_err)?;
        finish!(chart, bottom);
    } else {
        // Headroom above the tallest bar keeps the legend clear of the bars.
        let chart = builder
            .build_cartesian_2d(x_range, 0f64..top * 1.35)
            .map_err(plot_err)?;
        finish!(chart, 0.0);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renders both plots from made-up rows with the embedded font (no system font).
    #[test]
    fn draws_pngs_with_the_embedded_font() {
        let dir = std::env::temp_dir().join(format!("weft-bench-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut rows = Vec::new();
        for (i, setup) in ["direct", "weft-iptables", "weft-ebpf-sockmap", "nginx"]
            .iter()
            .enumerate()
        {
            for (proto, load, rate) in [
                ("http1", "max", None),
                ("http1", "conn", None),
                ("h2", "max", None),
                ("http1", "1000/s", Some(1000)),
                ("h2", "1000/s", Some(1000)),
                ("tcp", "bulk", None),
            ] {
                let mut r = Row::new(setup, proto, load, 0);
                r.rate = rate;
                r.rps = Some(10_000.0 / (i + 1) as f64);
                r.conn_per_s = Some(3_000.0 / (i + 1) as f64);
                r.p50_ms = Some(0.1 * (i + 1) as f64);
                r.p99_ms = Some(0.5 * (i + 1) as f64);
                r.p999_ms = Some(1.0 * (i + 1) as f64);
                r.gbit_s = Some(20.0 / (i + 1) as f64);
                rows.push(r);
            }
        }
        let mut na = Row::new("weft-ebpf", "http1", "max", 0);
        na.available = false;
        rows.push(na);
        draw(&dir, &rows).expect("draws");
        for f in ["throughput.png", "latency.png"] {
            let len = std::fs::metadata(dir.join(f)).map(|m| m.len()).unwrap_or(0);
            assert!(len > 1000, "{f} is {len} bytes");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
