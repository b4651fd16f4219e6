//! `rrmq bench --plot FILE.svg` (or `.html`): a run, or the whole matrix, as a picture.
//!
//! Why: a table gives the totals; a picture shows what a total hides (a stall in the middle
//! of a run, latency that grows as the log does, a cell far off the others). Drawn with
//! `plotters`' SVG backend into a string, so the picture is one self-contained text file
//! that a README can show and a test can read.
//!
//! What it owns: the layout of the two pictures. A run: throughput per second per operation
//! (messages per second too for batch calls) above, p50 and p99 latency per second below,
//! the run's overall percentiles in the title. The matrix: one bar of throughput per cell
//! above, its p50 (dark) in front of its p99 (light) below. The numbers come from
//! [`super::report`]; nothing here measures.

use std::path::Path;

use plotters::coord::ranged1d::{SegmentValue, SegmentedCoord};
use plotters::coord::types::{RangedCoordf64, RangedCoordusize};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::report::{
    format_bytes, MatrixRow, OperationKind, OperationReport, Report, TimelinePoint,
};
use crate::cli::CliError;

/// A chart over time: seconds on x, a value on y.
type LineChart<'a, 'b> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A matrix chart: one segment a cell on x, a value on y.
type BarChart<'a, 'b> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<SegmentedCoord<RangedCoordusize>, RangedCoordf64>>;

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 720;
const FONT: &str = "sans-serif";
/// One color per operation, in `OperationKind` order.
const COLORS: [RGBColor; 3] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
];

/// Writes `svg` to `path`, wrapped in a minimal HTML page when `path` ends in `.html`.
pub(super) fn write(path: &Path, svg: &str) -> Result<(), CliError> {
    let html = path
        .extension()
        .and_then(|extension| extension.to_str())
        .is_some_and(|extension| extension.eq_ignore_ascii_case("html"));
    let text = if html {
        format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>rrmq bench</title>\
             </head>\n<body>\n{svg}\n</body></html>\n"
        )
    } else {
        svg.to_string()
    };
    std::fs::write(path, text).map_err(CliError::io(format!(
        "cannot write the plot to {}",
        path.display()
    )))
}

fn drawing(error: impl std::fmt::Display) -> CliError {
    CliError::Io {
        context: "cannot draw the plot".to_string(),
        source: std::io::Error::other(error.to_string()),
    }
}

fn color(kind: OperationKind) -> RGBColor {
    match kind {
        OperationKind::Put => COLORS[0],
        OperationKind::Get => COLORS[1],
        OperationKind::Ack => COLORS[2],
    }
}

/// One named series of points.
struct Line {
    name: String,
    style: ShapeStyle,
    points: Vec<(f64, f64)>,
}

/// Calls (or messages) per second in each second of `operation`'s series: the last second
/// may be partial (the window ends inside it), so it is divided by its true length.
fn rates(operation: &OperationReport, elapsed: f64, messages: bool) -> Vec<(f64, f64)> {
    operation
        .timeline
        .iter()
        .filter_map(|point| {
            let start = point.end_second as f64 - 1.0;
            let width = (elapsed - start).min(1.0);
            (width > 0.05).then(|| {
                let count = if messages {
                    point.messages
                } else {
                    point.calls
                };
                (start + width, count as f64 / width)
            })
        })
        .collect()
}

fn latency_title(operation: &OperationReport) -> String {
    match &operation.latency_ms {
        Some(latency) => format!(
            "{} p50 {:.2} ms  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            operation.operation.name(),
            latency.p50,
            latency.p90,
            latency.p99,
            latency.p999,
            latency.max
        ),
        None => format!("{}: no call succeeded", operation.operation.name()),
    }
}

/// A run: throughput over time above, latency over time below.
pub(super) fn run_svg(report: &Report, title: &str) -> Result<String, CliError> {
    let elapsed = report.elapsed_seconds.max(0.001);
    let mut throughput: Vec<Line> = Vec::new();
    let mut latency: Vec<Line> = Vec::new();
    for operation in &report.operations {
        let kind = operation.operation;
        throughput.push(Line {
            name: format!("{} calls/s", kind.name()),
            style: color(kind).stroke_width(2),
            points: rates(operation, elapsed, false),
        });
        if operation.messages.is_some() {
            throughput.push(Line {
                name: format!("{} messages/s", kind.name()),
                style: color(kind).mix(0.5).stroke_width(2),
                points: rates(operation, elapsed, true),
            });
        }
        let series = |pick: fn(&TimelinePoint) -> Option<f64>| -> Vec<(f64, f64)> {
            operation
                .timeline
                .iter()
                .filter_map(|point| pick(point).map(|ms| (point.end_second as f64 - 0.5, ms)))
                .filter(|(second, _)| *second <= elapsed)
                .collect()
        };
        latency.push(Line {
            name: format!("{} p50 ms", kind.name()),
            style: color(kind).stroke_width(2),
            points: series(|point| point.p50_ms),
        });
        latency.push(Line {
            name: format!("{} p99 ms", kind.name()),
            style: color(kind).mix(0.45).stroke_width(2),
            points: series(|point| point.p99_ms),
        });
    }
    let subtitle: Vec<String> = report.operations.iter().map(latency_title).collect();

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let root = root.titled(title, (FONT, 20)).map_err(drawing)?;
        let (header, body) = root.split_vertically(22 * subtitle.len().max(1) as u32 + 6);
        for (line, text) in subtitle.iter().enumerate() {
            header
                .draw(&Text::new(
                    text.clone(),
                    (60, 4 + 22 * line as i32),
                    (FONT, 15).into_font(),
                ))
                .map_err(drawing)?;
        }
        let (upper, lower) = body.split_vertically(body.dim_in_pixel().1 / 2);

        let rate_max = throughput
            .iter()
            .flat_map(|line| line.points.iter().map(|(_, rate)| *rate))
            .fold(1.0f64, f64::max);
        let mut chart = line_panel(
            &upper,
            "throughput per second",
            elapsed,
            rate_max,
            "per second",
        )?;
        for Line {
            name,
            style,
            points,
        } in throughput
        {
            chart
                .draw_series(LineSeries::new(points.clone(), style))
                .map_err(drawing)?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart
                .draw_series(
                    points
                        .into_iter()
                        .map(|point| Circle::new(point, 3, style.color.filled())),
                )
                .map_err(drawing)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(drawing)?;

        let latency_max = latency
            .iter()
            .flat_map(|line| line.points.iter().map(|(_, ms)| *ms))
            .fold(0.1f64, f64::max);
        let mut chart = line_panel(
            &lower,
            "latency per second (ms)",
            elapsed,
            latency_max,
            "ms",
        )?;
        for Line {
            name,
            style,
            points,
        } in latency
        {
            chart
                .draw_series(LineSeries::new(points, style))
                .map_err(drawing)?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(drawing)?;
        root.present().map_err(drawing)?;
    }
    Ok(svg)
}

/// A chart of lines over the measured window: 0 to `elapsed` seconds on x; 0 to 10 %
/// above `y_max` on y, with its mesh drawn.
fn line_panel<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, Shift>,
    caption: &str,
    elapsed: f64,
    y_max: f64,
    y_desc: &str,
) -> Result<LineChart<'a, 'b>, CliError> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..elapsed, 0f64..y_max * 1.1)
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .x_desc("seconds into the measured window")
        .y_desc(y_desc)
        .draw()
        .map_err(drawing)?;
    Ok(chart)
}

/// The name of a matrix cell on the x axis: `produce C=64 1 KiB`.
fn cell_name(row: &MatrixRow) -> String {
    format!(
        "{} C={} {}",
        row.workload,
        row.clients,
        format_bytes(row.message_bytes)
    )
}

fn measured(row: &MatrixRow) -> Option<&OperationReport> {
    let kind = if row.workload == "consume" {
        OperationKind::Get
    } else {
        OperationKind::Put
    };
    row.report.operation(kind)
}

/// Cell `index`'s bar up to `value`, narrower than its segment so bars stand apart.
fn bar(index: usize, value: f64, style: ShapeStyle) -> Rectangle<(SegmentValue<usize>, f64)> {
    let mut bar = Rectangle::new(
        [
            (SegmentValue::Exact(index), 0.0),
            (SegmentValue::Exact(index + 1), value),
        ],
        style,
    );
    bar.set_margin(0, 0, 12, 12);
    bar
}

/// A chart of one bar a matrix cell: `count` segments on x, named by `label`; 0 to 15 %
/// above `y_max` on y, with its mesh drawn.
fn bar_panel<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, Shift>,
    caption: &str,
    count: usize,
    label: &dyn Fn(&SegmentValue<usize>) -> String,
    y_max: f64,
    y_desc: &str,
) -> Result<BarChart<'a, 'b>, CliError> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d((0..count).into_segmented(), 0f64..y_max * 1.15)
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(count)
        .x_label_formatter(label)
        .y_desc(y_desc)
        .draw()
        .map_err(drawing)?;
    Ok(chart)
}

/// The matrix: a throughput bar per cell above, p50 in front of p99 per cell below.
pub(super) fn matrix_svg(rows: &[MatrixRow], title: &str) -> Result<String, CliError> {
    let names: Vec<String> = rows.iter().map(cell_name).collect();
    let rates: Vec<f64> = rows
        .iter()
        .map(|row| measured(row).map_or(0.0, |operation| operation.ops_per_second))
        .collect();
    let latencies: Vec<(f64, f64)> = rows
        .iter()
        .map(|row| {
            measured(row)
                .and_then(|operation| operation.latency_ms.as_ref())
                .map_or((0.0, 0.0), |latency| (latency.p50, latency.p99))
        })
        .collect();
    let count = rows.len().max(1);
    let label = |value: &SegmentValue<usize>| match value {
        SegmentValue::CenterOf(index) | SegmentValue::Exact(index) => {
            names.get(*index).cloned().unwrap_or_default()
        }
        SegmentValue::Last => String::new(),
    };

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let root = root.titled(title, (FONT, 20)).map_err(drawing)?;
        let (upper, lower) = root.split_vertically(root.dim_in_pixel().1 / 2);

        let rate_max = rates.iter().copied().fold(1.0f64, f64::max);
        let mut chart = bar_panel(
            &upper,
            "throughput (calls/s)",
            count,
            &label,
            rate_max,
            "calls/s",
        )?;
        chart
            .draw_series(
                rates
                    .iter()
                    .enumerate()
                    .map(|(index, rate)| bar(index, *rate, COLORS[0].filled())),
            )
            .map_err(drawing)?
            .label("calls/s")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], COLORS[0].filled()));
        chart
            .draw_series(rates.iter().enumerate().map(|(index, rate)| {
                Text::new(
                    format!("{rate:.0}"),
                    (SegmentValue::CenterOf(index), *rate),
                    (FONT, 13).into_font(),
                )
            }))
            .map_err(drawing)?;

        let latency_max = latencies.iter().map(|(_, p99)| *p99).fold(0.1f64, f64::max);
        let mut chart = bar_panel(
            &lower,
            "latency (ms): p50 dark, p99 light",
            count,
            &label,
            latency_max,
            "ms",
        )?;
        chart
            .draw_series(
                latencies
                    .iter()
                    .enumerate()
                    .map(|(index, (_, p99))| bar(index, *p99, COLORS[1].mix(0.35).filled())),
            )
            .map_err(drawing)?
            .label("p99")
            .legend(|(x, y)| {
                Rectangle::new([(x, y - 5), (x + 15, y + 5)], COLORS[1].mix(0.35).filled())
            });
        chart
            .draw_series(
                latencies
                    .iter()
                    .enumerate()
                    .map(|(index, (p50, _))| bar(index, *p50, COLORS[1].filled())),
            )
            .map_err(drawing)?
            .label("p50")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], COLORS[1].filled()));
        chart
            .draw_series(latencies.iter().enumerate().map(|(index, (p50, p99))| {
                Text::new(
                    format!("{p50:.1} / {p99:.1}"),
                    (SegmentValue::CenterOf(index), *p99),
                    (FONT, 13).into_font(),
                )
            }))
            .map_err(drawing)?;
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(drawing)?;
        root.present().map_err(drawing)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::super::report::{ClusterReport, CpuTime, Recorder};
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn report(workload: &str, rate: u64) -> Report {
        let mut recorder = Recorder::new();
        let kind = if workload == "consume" {
            OperationKind::Get
        } else {
            OperationKind::Put
        };
        for microseconds in [800, 900, 1000, 5000] {
            recorder.record(
                kind,
                super::super::report::tests_support::done(microseconds),
            );
        }
        let mut operations = recorder.finish(Duration::from_secs(3));
        assert_eq!(operations[0].timeline.len(), 1, "all in the first second");
        assert_eq!(operations[0].timeline[0].calls, 4);
        operations[0].timeline = (1..=3)
            .map(|second| TimelinePoint {
                end_second: second,
                calls: rate * second,
                messages: rate * second,
                p50_ms: Some(0.9),
                p99_ms: Some(5.0 + second as f64),
            })
            .collect();
        Report {
            workload: workload.to_string(),
            cluster: ClusterReport {
                size: 3,
                leader: Some(0),
                nodes: Vec::new(),
            },
            parameters: BTreeMap::from([("clients".to_string(), "4".to_string())]),
            elapsed_seconds: 2.5,
            operations,
            bench_cpu: CpuTime::default(),
            bench_cpu_percent_of_core: 0.0,
            watched: Vec::new(),
            wal: Vec::new(),
        }
    }

    #[test]
    fn a_run_is_drawn_as_svg_with_its_series_and_percentiles() {
        let svg = run_svg(&report("produce", 1000), "rrmq bench produce").expect("drawn");
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
        assert!(svg.trim_end().ends_with("</svg>"));
        for expected in [
            "rrmq bench produce",
            "put calls/s",
            "put p50 ms",
            "put p99 ms",
            "throughput per second",
            "p99 5.00",
        ] {
            assert!(svg.contains(expected), "no {expected:?} in the SVG");
        }
        assert!(svg.contains("<polyline"), "the series are lines");

        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("run.svg");
        write(&path, &svg).expect("written");
        let written = std::fs::read_to_string(&path).expect("readable");
        assert_eq!(written, svg);
        let page = dir.path().join("run.html");
        write(&page, &svg).expect("written");
        let written = std::fs::read_to_string(&page).expect("readable");
        assert!(written.starts_with("<!DOCTYPE html>") && written.contains("<svg"));
        assert!(write(&dir.path().join("missing/run.svg"), &svg).is_err());
    }

    #[test]
    fn the_matrix_is_one_picture_with_a_bar_per_cell() {
        let rows: Vec<MatrixRow> = [
            ("produce", 1, 100),
            ("produce", 64, 1024),
            ("consume", 16, 100),
        ]
        .into_iter()
        .map(|(workload, clients, message_bytes)| MatrixRow {
            workload: workload.to_string(),
            clients,
            message_bytes,
            report: report(workload, 100 * clients as u64),
        })
        .collect();
        let svg = matrix_svg(&rows, "rrmq bench --matrix").expect("drawn");
        assert!(svg.starts_with("<svg"));
        for expected in [
            "produce C=1 100 B",
            "produce C=64 1 KiB",
            "consume C=16 100 B",
            "p50",
            "p99",
        ] {
            assert!(svg.contains(expected), "no {expected:?} in the SVG");
        }
        assert!(svg.matches("<rect").count() >= 9, "three bars per cell");
    }
}
