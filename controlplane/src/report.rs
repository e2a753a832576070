//! Pictures of a run, for people who would rather look than read a status log: one
//! SVG file, no JavaScript (plotters' SVG backend). A run is drawn as panels stacked
//! over one time axis (offered and forwarded frames per second, drops by reason, table
//! fill by class, busy per worker); the lab benchmark as grouped bars.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;
use serde_json::Value;

/// One line of a panel: (seconds, value) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// One chart: a title, what the y axis counts, its lines.
pub struct Panel {
    pub title: String,
    pub y: String,
    pub series: Vec<Series>,
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn err<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> std::io::Error + '_ {
    move |e| std::io::Error::other(format!("--report {}: {e}", path.display()))
}

/// Draws `panels` stacked, sharing the time axis, into `path`.
pub fn timeline(path: &Path, title: &str, panels: &[Panel]) -> std::io::Result<()> {
    let panels: Vec<&Panel> = panels.iter().filter(|p| p.series.iter().any(|s| !s.points.is_empty())).collect();
    let height = 60 + 260 * panels.len().max(1) as u32;
    let root = SVGBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err(path))?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(err(path))?;
    let t_max = panels.iter().flat_map(|p| p.series.iter().flat_map(|s| s.points.iter().map(|q| q.0))).fold(1.0f64, f64::max);
    let areas = root.split_evenly((panels.len().max(1), 1));
    for (area, p) in areas.iter().zip(&panels) {
        let y_max = p.series.iter().flat_map(|s| s.points.iter().map(|q| q.1)).fold(0.0f64, f64::max).max(1e-9) * 1.1;
        let mut c = ChartBuilder::on(area)
            .caption(&p.title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..t_max, 0.0..y_max)
            .map_err(err(path))?;
        c.configure_mesh().x_desc("seconds").y_desc(p.y.as_str()).draw().map_err(err(path))?;
        for (i, s) in p.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            c.draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))
                .map_err(err(path))?
                .label(s.name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        }
        c.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(err(path))?;
    }
    root.present().map_err(err(path))
}

/// One bar: which group (x), which series (colour), its value.
pub struct Bar {
    pub group: String,
    pub series: String,
    pub value: f64,
}

/// Grouped bar charts, one per `(title, y axis, bars)`, stacked.
pub fn bars(path: &Path, title: &str, charts: &[(String, String, Vec<Bar>)]) -> std::io::Result<()> {
    let height = 60 + 300 * charts.len().max(1) as u32;
    let root = SVGBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err(path))?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(err(path))?;
    let areas = root.split_evenly((charts.len().max(1), 1));
    for (area, (caption, y, bars)) in areas.iter().zip(charts) {
        let mut groups: Vec<&str> = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        for b in bars {
            if !groups.contains(&b.group.as_str()) {
                groups.push(&b.group);
            }
            if !names.contains(&b.series.as_str()) {
                names.push(&b.series);
            }
        }
        let y_max = bars.iter().map(|b| b.value).fold(0.0f64, f64::max).max(1e-9) * 1.5;
        let n = names.len().max(1) as f64;
        let mut c = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..groups.len() as f64, 0.0..y_max)
            .map_err(err(path))?;
        let labels = groups.clone();
        c.configure_mesh()
            .disable_x_mesh()
            .x_labels(groups.len() * 2 + 1)
            .x_label_formatter(&|x| {
                let i = (*x - 0.5).round();
                if (x - 0.5 - i).abs() < 1e-6 && i >= 0.0 { labels.get(i as usize).map_or(String::new(), |s| s.to_string()) } else { String::new() }
            })
            .y_desc(y.as_str())
            .draw()
            .map_err(err(path))?;
        for (si, name) in names.iter().enumerate() {
            let color = COLORS[si % COLORS.len()];
            let rects: Vec<Rectangle<(f64, f64)>> = bars
                .iter()
                .filter(|b| b.series == *name)
                .filter_map(|b| {
                    let g = groups.iter().position(|x| *x == b.group)? as f64;
                    let x0 = g + 0.1 + 0.8 * si as f64 / n;
                    Some(Rectangle::new([(x0, 0.0), (x0 + 0.8 / n, b.value)], color.filled()))
                })
                .collect();
            c.draw_series(rects).map_err(err(path))?.label(*name).legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        }
        c.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(err(path))?;
    }
    root.present().map_err(err(path))
}

/// `1234567` as `1,234,567`, for tables people read.
pub fn thousands(x: u64) -> String {
    let s = x.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Per-second rates from cumulative counts `(t, count)`.
pub fn rates(samples: &[(f64, f64)]) -> Vec<(f64, f64)> {
    samples.windows(2).filter(|w| w[1].0 > w[0].0).map(|w| (w[1].0, ((w[1].1 - w[0].1) / (w[1].0 - w[0].0)).max(0.0))).collect()
}

/// Panels from an appliance's `/status` answers sampled over a run, `(seconds, status)`:
/// drops per second by reason, table fill by class, busy per worker.
pub fn appliance_panels(samples: &[(f64, Value)]) -> Vec<Panel> {
    let mut drops: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut fill: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut busy: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut forwarded: Vec<(f64, f64)> = Vec::new();
    for (t, v) in samples {
        let tot = &v["total"];
        if let Some(m) = tot["counters"]["drops"].as_object() {
            for (k, n) in m {
                drops.entry(k.clone()).or_default().push((*t, n.as_f64().unwrap_or(0.0)));
            }
        }
        if let Some(fw) = tot["counters"]["forward_drops"].as_object() {
            for (k, n) in fw.iter().filter(|(_, n)| n.as_u64().unwrap_or(0) > 0) {
                drops.entry(format!("forwarding: {k}")).or_default().push((*t, n.as_f64().unwrap_or(0.0)));
            }
        }
        let ring: f64 = ["outside", "inside"]
            .iter()
            .map(|s| tot["counters"]["xdp"][s]["rx_ring_full"].as_f64().unwrap_or(0.0) + tot["counters"]["xdp"][s]["rx_dropped"].as_f64().unwrap_or(0.0))
            .sum();
        drops.entry("RX rings".into()).or_default().push((*t, ring));
        let shed: f64 = ["outside", "inside"].iter().map(|s| tot["counters"]["xdp"][s]["syn_shed"].as_f64().unwrap_or(0.0)).sum();
        drops.entry("SYNs shed at XDP".into()).or_default().push((*t, shed));
        if let Some(m) = tot["classes"].as_object() {
            for (k, f) in m {
                fill.entry(k.clone()).or_default().push((*t, f.as_f64().unwrap_or(0.0) * 100.0));
            }
        }
        if let Some(ws) = v["workers"].as_array() {
            for w in ws {
                busy.entry(format!("worker {}", w["worker"])).or_default().push((*t, w["busy"].as_f64().unwrap_or(0.0) * 100.0));
            }
        }
        let tx = &tot["counters"]["tx"];
        forwarded.push((*t, tx["inside"].as_f64().unwrap_or(0.0) + tx["outside"].as_f64().unwrap_or(0.0)));
    }
    // Reasons that never counted anything are left out of the picture.
    let drops: Vec<Series> = drops.into_iter().map(|(name, pts)| Series { name, points: rates(&pts) }).filter(|s| s.points.iter().any(|p| p.1 > 0.0)).collect();
    vec![
        Panel {
            title: "appliance: frames forwarded per second".into(),
            y: "pps".into(),
            series: vec![Series { name: "forwarded (tx)".into(), points: rates(&forwarded) }],
        },
        Panel { title: "appliance: drops per second by reason".into(), y: "drops/s".into(), series: drops },
        Panel {
            title: "appliance: table fill by admission class".into(),
            y: "% of capacity".into(),
            series: fill.into_iter().map(|(name, points)| Series { name, points }).collect(),
        },
        Panel {
            title: "appliance: busy per worker".into(),
            y: "% of polls with work".into(),
            series: busy.into_iter().map(|(name, points)| Series { name, points }).collect(),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeline_and_bars_are_svg_with_their_labels() {
        let dir = std::env::temp_dir().join(format!("hf-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("run.svg");
        let panels = vec![Panel {
            title: "frames per second".into(),
            y: "pps".into(),
            series: vec![
                Series { name: "offered".into(), points: vec![(1.0, 10.0), (2.0, 20.0)] },
                Series { name: "forwarded".into(), points: vec![(1.0, 9.0), (2.0, 19.0)] },
            ],
        }];
        timeline(&p, "a run", &panels).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("forwarded") && svg.contains("a run") && !svg.contains("<script"));
        let b = dir.join("bench.svg");
        let bars_in =
            vec![Bar { group: "udp-1".into(), series: "holdfast".into(), value: 0.5 }, Bar { group: "udp-1".into(), series: "testpmd".into(), value: 0.6 }];
        bars(&b, "bench", &[("Mpps".into(), "Mpps".into(), bars_in)]).unwrap();
        let svg = std::fs::read_to_string(&b).unwrap();
        assert!(svg.contains("testpmd") && svg.contains("udp-1"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rates_are_differences_over_time() {
        assert_eq!(rates(&[(0.0, 0.0), (1.0, 100.0), (3.0, 300.0)]), vec![(1.0, 100.0), (3.0, 100.0)]);
    }
}
