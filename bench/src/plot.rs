//! PNG line charts of the benchmark series (plotters, bitmap backend; text
//! drawn with ab_glyph from a system TrueType font).
use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

/// One chart: named lines of (x, y) points; x is a Service count.
pub struct Plot {
    pub file: String,
    pub title: String,
    pub y_label: String,
    pub lines: Vec<(String, Vec<(f64, f64)>)>,
}

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn register_font() -> Result<()> {
    let bytes = std::fs::read(FONT).with_context(|| {
        format!("{FONT} (Debian fonts-dejavu-core; cargo xtask bench installs it)")
    })?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{FONT} is not a usable font"))
}

pub fn render(dir: &Path, plots: &[Plot]) -> Result<()> {
    if plots.is_empty() {
        return Ok(());
    }
    register_font()?;
    std::fs::create_dir_all(dir)?;
    for p in plots {
        draw(&dir.join(&p.file), p).with_context(|| format!("drawing {}", p.file))?;
    }
    Ok(())
}

fn draw(path: &Path, p: &Plot) -> Result<()> {
    let points = p.lines.iter().flat_map(|(_, v)| v.iter());
    let (mut x_max, mut y_max) = (1.0f64, 0.0f64);
    for (x, y) in points {
        x_max = x_max.max(*x);
        y_max = y_max.max(*y);
    }
    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&p.title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((1f64..x_max * 1.5).log_scale(), 0f64..y_max * 1.15)?;
    chart
        .configure_mesh()
        .x_desc("Services programmed")
        .y_desc(&p.y_label)
        .label_style(("sans-serif", 14))
        .draw()?;
    for (i, (name, pts)) in p.lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = pts.iter().map(|(x, y)| (x.max(1.0), *y)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart.draw_series(pts.into_iter().map(|pt| Circle::new(pt, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}
