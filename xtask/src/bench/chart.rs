//! docs/benchmarks.png: per scenario, bars for (a1), (a2), (b), (b)+(k) and (c).

use super::*;

/// The PNG chart: per scenario, bars for (a1), (a2), (b), (b)+(k) and (c).
pub fn chart(figures: &[Figures], path: &Path) -> Result<(), String> {
    use plotters::prelude::*;
    let font = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    ]
    .iter()
    .find_map(|p| std::fs::read(p).ok())
    .ok_or("no DejaVuSans.ttf for the chart's labels (apt-get install fonts-dejavu-core)")?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| "cannot load the font".to_string())?;
    let root = BitMapBackend::new(path, (1300, 620)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let series = [
        "(a1) in Kratos",
        "(a2) Ready",
        "(b) Kratos floor",
        "(b)+(k) floors",
        "(c) per-object",
    ];
    let colors = [BLUE, GREEN, RGBColor(120, 120, 120), BLACK, RED];
    // A log scale: the per-object baseline runs for minutes, the floors for seconds.
    const FLOOR: f64 = 0.5;
    let max = figures
        .iter()
        .map(|f| f.c.max(f.a2).max(f.b + f.k))
        .fold(1.0, f64::max)
        * 2.0;
    let groups = figures.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "kratos-operator: seconds until N new identities converge (log scale; \u{2265}: a lower bound, stopped at the cap)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..(groups as f64), (FLOOR..max).log_scale())
        .map_err(err)?;
    let mixed_finalizers = figures.iter().any(|f| f.finalizer == Finalizer::Admission);
    let labels: Vec<String> = figures
        .iter()
        .map(|f| {
            format!(
                "N={}{}{}{}{}",
                f.n,
                if f.passwords { " + passwords" } else { "" },
                if f.database == Database::Sqlite {
                    " sqlite"
                } else {
                    ""
                },
                if f.finalizer == Finalizer::Operator && mixed_finalizers {
                    " op. finalizer"
                } else {
                    ""
                },
                if f.run > 1 {
                    format!(" #{}", f.run)
                } else {
                    String::new()
                }
            )
        })
        .collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.01 {
                labels.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("seconds (log scale)")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    for (s, name) in series.iter().enumerate() {
        let color = colors[s];
        let bars: Vec<(f64, f64)> = figures
            .iter()
            .enumerate()
            .map(|(g, f)| {
                let v = match s {
                    0 => f.a1,
                    1 => f.a2,
                    2 => f.b,
                    3 => f.b + f.k,
                    _ => f.c,
                };
                (g as f64 + 0.1 + s as f64 * 0.16, v)
            })
            .collect();
        chart
            .draw_series(bars.iter().filter(|(_, v)| *v > 0.0).map(|(x, v)| {
                Rectangle::new([(*x, FLOOR), (*x + 0.14, v.max(FLOOR))], color.filled())
            }))
            .map_err(err)?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    // Lower bounds (the per-object baseline stopped at its cap) say so above their bar.
    chart
        .draw_series(
            figures
                .iter()
                .enumerate()
                .filter(|(_, f)| f.c > 0.0 && f.c_ready < f.n)
                .map(|(g, f)| {
                    Text::new(
                        format!("\u{2265}{:.0}", f.c),
                        (g as f64 + 0.1 + 4.0 * 0.16 - 0.04, f.c * 1.15),
                        ("sans-serif", 14).into_font().color(&RED),
                    )
                }),
        )
        .map_err(err)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_draws_every_scenario_on_a_log_scale_with_lower_bounds() {
        let figure = |n, c, c_ready| Figures {
            n,
            a1: 3.0,
            a2: 4.5,
            b: 1.7,
            k: 1.4,
            c,
            c_ready,
            ..Figures::default()
        };
        let figures = [
            figure(1000, 128.9, 1000),
            figure(10000, 480.0, 1510),
            figure(10000, 0.0, 0),
        ];
        let dir = kratos_operator_testenv::repo_root()
            .join("target")
            .join("chart-test");
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("benchmarks.png");
        chart(&figures, &path).expect("chart");
        let png = std::fs::read(&path).expect("png");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        assert!(png.len() > 10_000, "an empty chart ({} bytes)", png.len());
    }
}
