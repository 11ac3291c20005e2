//! `--plot FILE.svg`: GFLOP/s per layer and algorithm as grouped horizontal bars, with the
//! measured FMA peak as a vertical line. Plain SVG written by hand (no plotting dependency).

use crate::bench::Row;
use std::fmt::Write;

const COLORS: [&str; 6] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1",
];

/// The chart as SVG text.
pub fn svg(rows: &[Row], peak: f64, title: &str) -> String {
    let mut layers: Vec<&str> = Vec::new();
    let mut algos: Vec<&str> = Vec::new();
    for r in rows {
        if !layers.contains(&r.layer.as_str()) {
            layers.push(&r.layer);
        }
        if !algos.contains(&r.algo.as_str()) {
            algos.push(&r.algo);
        }
    }
    let bar = 12.0;
    let group = bar * algos.len() as f64 + 8.0;
    let (left, top, width) = (190.0, 40.0, 620.0);
    let height = top + group * layers.len() as f64 + 40.0;
    let xmax = rows.iter().map(|r| r.gflops).fold(peak, f64::max).max(1.0) * 1.05;
    let x = |v: f64| left + width * v / xmax;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-family="sans-serif" font-size="11">"#,
        left + width + 150.0
    );
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="20" font-size="14">{}</text>"#,
        escape(title)
    );
    for (li, layer) in layers.iter().enumerate() {
        let y0 = top + group * li as f64;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            left - 6.0,
            y0 + group / 2.0,
            escape(layer)
        );
        for (ai, algo) in algos.iter().enumerate() {
            if let Some(r) = rows.iter().find(|r| r.layer == *layer && r.algo == *algo) {
                let y = y0 + bar * ai as f64;
                let _ = writeln!(
                    s,
                    r#"<rect x="{left}" y="{y}" width="{:.1}" height="{}" fill="{}"><title>{} {}: {:.1} GFLOP/s</title></rect>"#,
                    x(r.gflops) - left,
                    bar - 2.0,
                    COLORS[ai % COLORS.len()],
                    escape(layer),
                    escape(algo),
                    r.gflops
                );
            }
        }
    }
    let bottom = top + group * layers.len() as f64;
    let _ = writeln!(
        s,
        r#"<line x1="{0:.1}" y1="{top}" x2="{0:.1}" y2="{bottom}" stroke="black" stroke-dasharray="4 3"/>"#,
        x(peak)
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">FMA peak {peak:.0}</text>"#,
        x(peak),
        bottom + 14.0
    );
    for t in 0..=5 {
        let v = xmax / 1.05 * t as f64 / 5.0;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle" fill="gray">{v:.0}</text>"#,
            x(v),
            bottom + 28.0
        );
    }
    for (ai, algo) in algos.iter().enumerate() {
        let y = top + 14.0 * ai as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{}" width="10" height="10" fill="{}"/>"#,
            left + width + 20.0,
            y,
            COLORS[ai % COLORS.len()]
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}">{}</text>"#,
            left + width + 35.0,
            y + 9.0,
            escape(algo)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
