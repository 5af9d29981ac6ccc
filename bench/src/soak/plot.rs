//! A plain SVG chart of panels stacked over one time axis: lines and dots, a vertical marker
//! (the end of the warm-up), ticks at round values. Written by hand rather than with a plotting
//! crate: it is a few polylines, and the file stays small and readable in a diff.

use std::fmt::Write as _;

/// How a series is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Points joined by a line.
    Line,
    /// A dot per point.
    Dots,
}

/// One series of a panel.
#[derive(Clone, Debug)]
pub struct Series {
    /// Its name in the legend.
    pub label: String,
    /// An SVG colour.
    pub color: &'static str,
    /// Line or dots.
    pub style: Style,
    /// `(x, y)` points, `x` in the chart's unit.
    pub points: Vec<(f64, f64)>,
}

/// One panel: its own `y` axis.
#[derive(Clone, Debug)]
pub struct Panel {
    /// Written above the panel.
    pub title: String,
    /// The `y` axis' unit.
    pub y_label: String,
    /// Its series.
    pub series: Vec<Series>,
    /// Vertical lines at these `x`, with a label.
    pub markers: Vec<(f64, String)>,
    /// The `y` axis starts at 0 (else at the smallest value, rounded down).
    pub from_zero: bool,
}

const WIDTH: f64 = 900.0;
const PANEL_HEIGHT: f64 = 220.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 50.0;
const GAP: f64 = 70.0;

/// Round tick values covering `[low, high]`: steps of 1, 2 or 5 times a power of ten, about
/// `count` of them.
pub fn ticks(low: f64, high: f64, count: usize) -> Vec<f64> {
    if !(low.is_finite() && high.is_finite()) || high <= low || count == 0 {
        return vec![low];
    }
    let raw = (high - low) / count as f64;
    let power = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * power);
    let first = (low / step).floor() * step;
    let mut out = Vec::new();
    let mut k = 0;
    loop {
        let v = first + f64::from(k) * step;
        out.push(v);
        if v >= high - step * 1e-9 {
            break;
        }
        k += 1;
    }
    out
}

fn label(v: f64) -> String {
    if v.abs() >= 100.0 || v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Renders `panels` over `x` from 0 to `x_max` (`x_label` under the last one).
pub fn render(title: &str, x_label: &str, x_max: f64, panels: &[Panel]) -> String {
    let height = TOP + panels.len() as f64 * (PANEL_HEIGHT + GAP) + 10.0;
    let plot_w = WIDTH - LEFT - RIGHT;
    let x_max = if x_max > 0.0 { x_max } else { 1.0 };
    let x_ticks = ticks(0.0, x_max, 10);
    let x_top = *x_ticks.last().unwrap_or(&x_max);
    let sx = |x: f64| LEFT + x / x_top * plot_w;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="24" font-size="16" font-weight="bold">{}</text>"#,
        escape(title)
    );
    for (i, panel) in panels.iter().enumerate() {
        let top = TOP + i as f64 * (PANEL_HEIGHT + GAP) + 20.0;
        let bottom = top + PANEL_HEIGHT;
        let values: Vec<f64> = panel
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .filter(|v| v.is_finite())
            .collect();
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let (max, min) = if values.is_empty() {
            (1.0, 0.0)
        } else {
            (max, min)
        };
        let low = if panel.from_zero { 0.0 } else { min };
        let high = if max > low { max } else { low + 1.0 };
        let y_ticks = ticks(low, high, 5);
        let (y_low, y_high) = (y_ticks[0], *y_ticks.last().unwrap_or(&high));
        let y_span = if y_high > y_low { y_high - y_low } else { 1.0 };
        let sy = |y: f64| bottom - (y - y_low) / y_span * PANEL_HEIGHT;
        let _ = writeln!(
            svg,
            r#"<text x="{LEFT}" y="{}" font-size="14" font-weight="bold">{}</text>"#,
            top - 8.0,
            escape(&panel.title)
        );
        let _ = writeln!(
            svg,
            r##"<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL_HEIGHT}" fill="none" stroke="#999"/>"##
        );
        for y in &y_ticks {
            let py = sy(*y);
            let _ = writeln!(
                svg,
                r##"<line x1="{LEFT}" y1="{py:.1}" x2="{}" y2="{py:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + plot_w,
                LEFT - 6.0,
                py + 4.0,
                label(*y)
            );
        }
        for x in &x_ticks {
            let px = sx(*x);
            let _ = writeln!(
                svg,
                r##"<line x1="{px:.1}" y1="{top}" x2="{px:.1}" y2="{bottom}" stroke="#f4f4f4"/><text x="{px:.1}" y="{}" text-anchor="middle">{}</text>"##,
                bottom + 16.0,
                label(*x)
            );
        }
        let _ = writeln!(
            svg,
            r#"<text transform="translate(16,{:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            top + PANEL_HEIGHT / 2.0,
            escape(&panel.y_label)
        );
        for (x, text) in &panel.markers {
            let px = sx(*x);
            let _ = writeln!(
                svg,
                r##"<line x1="{px:.1}" y1="{top}" x2="{px:.1}" y2="{bottom}" stroke="#888" stroke-dasharray="4 3"/><text x="{:.1}" y="{}" fill="#666">{}</text>"##,
                px + 4.0,
                top + 14.0,
                escape(text)
            );
        }
        let mut legend_x = LEFT + plot_w;
        for series in panel.series.iter().rev() {
            let text = escape(&series.label);
            legend_x -= 7.0 * text.len() as f64 + 30.0;
            let _ = writeln!(
                svg,
                r#"<rect x="{legend_x:.1}" y="{}" width="12" height="4" fill="{}"/><text x="{:.1}" y="{}">{text}</text>"#,
                top - 14.0,
                series.color,
                legend_x + 16.0,
                top - 8.0
            );
        }
        for series in &panel.series {
            let points: Vec<(f64, f64)> = series
                .points
                .iter()
                .filter(|p| p.0.is_finite() && p.1.is_finite())
                .map(|p| (sx(p.0), sy(p.1)))
                .collect();
            match series.style {
                Style::Line if points.len() > 1 => {
                    let path: Vec<String> = points
                        .iter()
                        .map(|(x, y)| format!("{x:.1},{y:.1}"))
                        .collect();
                    let _ = writeln!(
                        svg,
                        r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#,
                        series.color,
                        path.join(" ")
                    );
                }
                Style::Line | Style::Dots => {
                    for (x, y) in points {
                        let _ = writeln!(
                            svg,
                            r#"<circle cx="{x:.1}" cy="{y:.1}" r="2" fill="{}"/>"#,
                            series.color
                        );
                    }
                }
            }
        }
        if i + 1 == panels.len() {
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
                LEFT + plot_w / 2.0,
                bottom + 34.0,
                escape(x_label)
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(
            ticks(0.0, 30.0, 10),
            vec![0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0]
        );
        let t = ticks(0.0, 0.93, 5);
        assert_eq!(t.first(), Some(&0.0));
        assert!(*t.last().unwrap() >= 0.93);
        assert!((t[1] - 0.2).abs() < 1e-12);
        let t = ticks(212.3, 239.9, 5);
        assert!(t[0] <= 212.3 && *t.last().unwrap() >= 239.9);
        assert!((t[1] - t[0] - 10.0).abs() < 1e-9);
        assert_eq!(ticks(3.0, 3.0, 5), vec![3.0]);
    }

    #[test]
    fn a_chart_has_a_polyline_per_line_and_a_dot_per_point() {
        let panels = [
            Panel {
                title: "memory".to_owned(),
                y_label: "MiB".to_owned(),
                series: vec![Series {
                    label: "daemon RSS".to_owned(),
                    color: "#1f77b4",
                    style: Style::Line,
                    points: vec![(0.0, 40.0), (1.0, 41.0), (2.0, 41.5)],
                }],
                markers: vec![(1.0, "warm-up <end>".to_owned())],
                from_zero: true,
            },
            Panel {
                title: "latency".to_owned(),
                y_label: "ms".to_owned(),
                series: vec![Series {
                    label: "probe".to_owned(),
                    color: "#d62728",
                    style: Style::Dots,
                    points: vec![(0.5, 30.0), (1.5, f64::NAN), (1.7, 28.0)],
                }],
                markers: Vec::new(),
                from_zero: false,
            },
        ];
        let svg = render("soak & churn", "minutes", 2.0, &panels);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert_eq!(
            svg.matches("<circle").count(),
            2,
            "the NaN point is left out"
        );
        assert!(svg.contains("soak &amp; churn") && svg.contains("warm-up &lt;end&gt;"));
        assert!(!svg.contains("NaN"));
        // An empty panel still renders.
        let empty = Panel {
            title: "nothing".to_owned(),
            y_label: String::new(),
            series: Vec::new(),
            markers: Vec::new(),
            from_zero: true,
        };
        assert!(render("t", "x", 0.0, &[empty]).contains("nothing"));
    }
}
