//! The PNG chart: per metric, one bar per case with its median's ratio to the routed path.
//! Latency gets a panel of its own on a log axis (a path that queues is thousands of times
//! the routed one, and p50 and p99 differ by orders of magnitude), so no bar runs off it; the
//! other metrics share a linear panel.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::{
    FontStyle, FontTransform, register_font,
    text_anchor::{HPos, Pos, VPos},
};

use crate::{metrics::Metric, metrics::Results, peers::Case, scale::Point};

/// Debian's `fonts-dejavu-core`; `cargo xtask bench` installs it.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const SIZE: (u32, u32) = (1800, 760);
/// Legend entries per row, and each entry's width in pixels.
const LEGEND_ROW: usize = 4;
const LEGEND_WIDTH: i32 = 300;
/// Bars of the linear panel above this are cut (their label still shows the value): only a
/// case far off the others (CPU per request of a path that queues) gets there.
const MAX_RATIO: f64 = 6.0;
/// The latency panel's share of the width.
const LATENCY_WIDTH: f64 = 0.2;

/// Whether `m` goes to the latency panel (log axis).
fn on_log_panel(m: Metric) -> bool {
    matches!(m, Metric::P50 | Metric::P99)
}

/// One color per case, the same in every chart; the baselines in grays.
fn color(case: Case) -> RGBColor {
    match case {
        Case::Direct => RGBColor(0xa0, 0xa0, 0xa0),
        Case::Routed => RGBColor(0x55, 0x55, 0x55),
        Case::Nftables => RGBColor(0xf2, 0x9e, 0x1f),
        Case::Haproxy => RGBColor(0x1e, 0x78, 0xd2),
        Case::Nginx => RGBColor(0x3c, 0x9a, 0x48),
        Case::Sticky => RGBColor(0xc8, 0x1e, 0x5a),
        Case::StickyDsrTc => RGBColor(0xe8, 0x6a, 0x3a),
        Case::StickyDsrXdp => RGBColor(0x9a, 0x10, 0x30),
        Case::StickyProxy => RGBColor(0x7b, 0x3f, 0xb8),
        Case::StickyProxyCopy => RGBColor(0xb9, 0x95, 0xe0),
        Case::HaproxyHttp => RGBColor(0x7f, 0xb8, 0xf0),
        Case::NginxHttp => RGBColor(0x8f, 0xcf, 0x8f),
    }
}

/// A clipped bar's ratio, short enough to fit on the bar.
fn compact(r: f64) -> String {
    if r >= 1000.0 {
        format!("{:.0}k×", r / 1000.0)
    } else if r >= 10.0 {
        format!("{r:.0}×")
    } else {
        format!("{r:.1}×")
    }
}

pub fn draw(results: &Results, path: &Path, title: &str) -> anyhow::Result<()> {
    register()?;
    draw_with_font(results, path, title)
        .map_err(|e| anyhow::anyhow!("draw {}: {e}", path.display()))
}

/// plotters keeps fonts for the life of the process: read and registered once.
fn register() -> anyhow::Result<()> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let font = std::fs::read(FONT)
            .map_err(|e| format!("read {FONT} (apt-get install fonts-dejavu-core): {e}"))?;
        register_font(
            "sans-serif",
            FontStyle::Normal,
            Box::leak(font.into_boxed_slice()),
        )
        .map_err(|_| format!("{FONT} is not a usable font"))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// The scale curve: per figure a panel, live flows on a log axis.
pub fn draw_scale(points: &[Point], path: &Path) -> anyhow::Result<()> {
    register()?;
    draw_scale_with_font(points, path).map_err(|e| anyhow::anyhow!("draw {}: {e}", path.display()))
}

type Series = (&'static str, fn(&Point) -> f64);

fn draw_scale_with_font(points: &[Point], path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let panels: [(&str, &[Series]); 4] = [
        ("eBPF ns per established packet", &[("ns", |p| p.ebpf_ns)]),
        (
            "daemon CPU %, metrics scraped every second",
            &[("CPU %", |p| p.daemon_cpu * 100.0)],
        ),
        (
            "memory MiB",
            &[
                ("daemon RSS", |p| p.rss_mib),
                ("maps (kernel)", |p| p.map_mib),
            ],
        ),
        (
            "ms",
            &[
                ("sticky status", |p| p.status_ms),
                ("one scrape", |p| p.scrape_ms),
            ],
        ),
    ];
    let root = BitMapBackend::new(path, (1800, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let (head, body) = root.split_vertically(50);
    head.draw(&Text::new(
        "sticky kernel path as live flows (and clients) grow",
        (900, 10),
        TextStyle::from(("sans-serif", 24).into_font()).pos(Pos::new(HPos::Center, VPos::Top)),
    ))?;
    let lo = points
        .iter()
        .map(|p| f64::from(p.flows))
        .fold(f64::MAX, f64::min)
        / 2.0;
    let hi = points
        .iter()
        .map(|p| f64::from(p.flows))
        .fold(1.0, f64::max)
        * 2.0;
    let colors = [RGBColor(0xc8, 0x1e, 0x5a), RGBColor(0x1e, 0x78, 0xd2)];
    for (area, (title, series)) in body.split_evenly((1, panels.len())).iter().zip(panels) {
        let top = points
            .iter()
            .flat_map(|p| series.iter().map(move |(_, f)| f(p)))
            .fold(0.0f64, f64::max)
            .max(1e-3)
            * 1.2;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 17))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d((lo..hi).log_scale(), 0f64..top)?;
        chart
            .configure_mesh()
            .x_desc("live flows (log)")
            .x_label_formatter(&|v| compact_count(*v))
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 15))
            .draw()?;
        for (k, (name, f)) in series.iter().enumerate() {
            let color = colors[k % colors.len()];
            let line: Vec<(f64, f64)> = points.iter().map(|p| (f64::from(p.flows), f(p))).collect();
            chart
                .draw_series(LineSeries::new(line.clone(), color.stroke_width(3)))?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(3))
                });
            chart.draw_series(
                line.iter()
                    .map(|&(x, y)| Circle::new((x, y), 5, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// 1000 → "1k", 1000000 → "1M".
fn compact_count(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.0}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn draw_with_font(
    results: &Results,
    path: &Path,
    title: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let cases: Vec<Case> = Case::ALL
        .into_iter()
        .filter(|c| results.samples.contains_key(c))
        .collect();
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let rows = cases.len().div_ceil(LEGEND_ROW).max(1);
    let (head, body) = root.split_vertically(60 + 26 * u32::try_from(rows).unwrap_or(1));
    head.draw(&Text::new(
        title,
        (i32::try_from(SIZE.0 / 2).unwrap_or(0), 10),
        TextStyle::from(("sans-serif", 24).into_font()).pos(Pos::new(HPos::Center, VPos::Top)),
    ))?;
    // The legend is a row under the title, so it never hides a bar.
    let label =
        TextStyle::from(("sans-serif", 16).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    for (j, &case) in cases.iter().enumerate() {
        let x = 90 + LEGEND_WIDTH * i32::try_from(j % LEGEND_ROW).unwrap_or(0);
        let y = 60 + 26 * i32::try_from(j / LEGEND_ROW).unwrap_or(0);
        let color = color(case);
        head.draw(&Rectangle::new(
            [(x, y - 8), (x + 16, y + 8)],
            color.filled(),
        ))?;
        head.draw(&Text::new(case.label(), (x + 22, y), label.clone()))?;
    }
    let split = (f64::from(SIZE.0) * LATENCY_WIDTH) as u32;
    let (left, right) = body.split_horizontally(split);
    let latency: Vec<Metric> = Metric::ALL
        .into_iter()
        .filter(|m| on_log_panel(*m))
        .collect();
    let linear: Vec<Metric> = Metric::ALL
        .into_iter()
        .filter(|m| !on_log_panel(*m))
        .collect();
    let ratios = |ms: &[Metric]| -> Vec<f64> {
        ms.iter()
            .flat_map(|&m| cases.iter().filter_map(move |&c| results.ratio(c, m)))
            .filter(|r| r.is_finite() && *r > 0.0)
            .collect()
    };

    // Latency, log axis: from a bit under the smallest ratio (and 1) to a bit over the largest.
    let lat = ratios(&latency);
    let lo = lat.iter().copied().fold(1.0f64, f64::min) / 2.0;
    let hi = lat.iter().copied().fold(1.0f64, f64::max) * 2.0;
    let mut chart = ChartBuilder::on(&left)
        .margin(16)
        .x_label_area_size(56)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..latency.len() as f64, (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&|_| String::new())
        .y_label_formatter(&|v| compact(*v))
        .y_desc("median ÷ routed median (log)")
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 16))
        .draw()?;
    let slot = 0.84 / cases.len().max(1) as f64;
    for (j, &case) in cases.iter().enumerate() {
        let color = color(case);
        for (i, &m) in latency.iter().enumerate() {
            let Some(r) = results.ratio(case, m).filter(|r| r.is_finite() && *r > 0.0) else {
                continue;
            };
            let x0 = i as f64 + 0.08 + j as f64 * slot;
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x0, lo), (x0 + slot * 0.9, r)],
                color.filled(),
            )))?;
        }
    }
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(0.0, 1.0), (latency.len() as f64, 1.0)],
        BLACK.stroke_width(2),
    )))?;
    label_groups(&root, &latency, |x| chart.backend_coord(&(x, lo)))?;

    // Everything else, linear, cut at MAX_RATIO.
    let top = ratios(&linear)
        .into_iter()
        .fold(1.2f64, f64::max)
        .min(MAX_RATIO);
    let top = (top * 1.1 * 4.0).ceil() / 4.0;
    let mut chart = ChartBuilder::on(&right)
        .margin(16)
        .x_label_area_size(56)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..linear.len() as f64, 0f64..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&|_| String::new())
        .y_desc("median ÷ routed median")
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 16))
        .draw()?;
    // Clipped bars carry their ratio, written down the bar so it fits its width.
    let clipped = TextStyle::from(
        ("sans-serif", 13)
            .into_font()
            .transform(FontTransform::Rotate90),
    )
    .color(&WHITE)
    .pos(Pos::new(HPos::Left, VPos::Center));
    for (j, &case) in cases.iter().enumerate() {
        let color = color(case);
        for (i, &m) in linear.iter().enumerate() {
            let Some(r) = results.ratio(case, m) else {
                continue;
            };
            let x0 = i as f64 + 0.08 + j as f64 * slot;
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x0, 0.0), (x0 + slot * 0.9, r.min(top))],
                color.filled(),
            )))?;
            if r > top {
                chart.draw_series(std::iter::once(Text::new(
                    compact(r),
                    (x0 + slot * 0.45, top * 0.99),
                    clipped.clone(),
                )))?;
            }
        }
    }
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(0.0, 1.0), (linear.len() as f64, 1.0)],
        BLACK.stroke_width(2),
    )))?;

    label_groups(&root, &linear, |x| chart.backend_coord(&(x, 0.0)))?;
    root.present()?;
    Ok(())
}

/// Metric names under each group of bars, and a tick between groups, in absolute pixels below
/// a panel's plotting area: `at(x)` is the pixel of `x` on the panel's bottom axis.
fn label_groups(
    root: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    metrics: &[Metric],
    at: impl Fn(f64) -> (i32, i32),
) -> Result<(), Box<dyn std::error::Error>> {
    let style =
        TextStyle::from(("sans-serif", 15).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
    for (i, m) in metrics.iter().enumerate() {
        let (x, y) = at(i as f64 + 0.5);
        root.draw(&Text::new(m.short(), (x, y + 10), style.clone()))?;
        if i > 0 {
            let (gx, _) = at(i as f64);
            root.draw(&PathElement::new(
                vec![(gx, y), (gx, y + 8)],
                BLACK.stroke_width(1),
            ))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipped_labels_fit_a_bar() {
        assert_eq!(compact(10_575.0), "11k×");
        assert_eq!(compact(696.9), "697×");
        assert_eq!(compact(3.84), "3.8×");
    }

    #[test]
    fn draws_a_png() {
        if !Path::new(FONT).exists() {
            println!("skipped: {FONT} missing (`cargo xtask bench` installs it)");
            return;
        }
        let mut r = Results::default();
        for (case, k) in [
            (Case::Routed, 1.0),
            (Case::Sticky, 0.98),
            (Case::Haproxy, 9.0),
            (Case::StickyProxy, 1.6),
            (Case::StickyProxyCopy, 1.4),
            // A path that queues: thousands of times the routed latency (log panel), and cut
            // in the linear one.
            (Case::Nginx, 2500.0),
        ] {
            for m in Metric::ALL {
                // Proxy mode has no raw echo or iperf3 figures: the chart leaves gaps.
                if case.services().len() < 4 && matches!(m, Metric::Bulk1 | Metric::Echo) {
                    continue;
                }
                r.add(case, m, 100.0 * k);
            }
        }
        let dir = crate::cmd::TempDir::new("chart-test").unwrap();
        let png = dir.path.join("c.png");
        draw(&r, &png, "test").unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
        if let Some(keep) = std::env::var_os("STICKY_BENCH_KEEP_CHART") {
            std::fs::copy(&png, keep).unwrap();
        }
    }
}
