//! `rrmq bench produce --plot` against a real local 3-node cluster: the run is drawn into an
//! SVG file (and an HTML page around one), whatever its speed; the assertions are on the
//! file being written and well-formed with the run's series, never on the numbers in it.

mod common;

use common::Cluster;

#[test]
fn bench_produce_draws_its_run_into_an_svg_and_an_html_page() {
    let cluster = Cluster::start(3);
    cluster.wait_for_leader_via_rrmq();

    let svg_path = cluster.dir.path().join("x.svg");
    let svg_text = svg_path.to_str().expect("a UTF-8 temp path");
    let run = cluster.rrmq(&[
        "bench",
        "produce",
        "--duration",
        "2s",
        "-c",
        "4",
        "--plot",
        svg_text,
    ]);
    run.assert_code(0, "bench produce --plot");
    assert!(
        run.stdout_text().contains("put"),
        "the report is still printed: {}",
        run.describe()
    );
    let svg = std::fs::read_to_string(&svg_path)
        .unwrap_or_else(|error| panic!("{}: {error}: {}", svg_path.display(), run.describe()));
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(300)]);
    assert!(svg.trim_end().ends_with("</svg>"), "a whole SVG document");
    for series in [
        "put calls/s",
        "put p50 ms",
        "put p99 ms",
        "rrmq bench produce",
    ] {
        assert!(
            svg.contains(series),
            "no {series:?} in {}",
            svg_path.display()
        );
    }
    assert!(svg.contains("<polyline"), "the series are drawn as lines");

    let html_path = cluster.dir.path().join("x.html");
    let html_text = html_path.to_str().expect("a UTF-8 temp path");
    cluster
        .rrmq(&[
            "bench", "produce", "--count", "200", "-c", "2", "--plot", html_text,
        ])
        .assert_code(0, "bench produce --plot x.html");
    let html = std::fs::read_to_string(&html_path).expect("the page is written");
    assert!(
        html.starts_with("<!DOCTYPE html>"),
        "{}",
        &html[..html.len().min(300)]
    );
    assert!(html.contains("<svg") && html.contains("put calls/s"));

    // A plot that cannot be written is an error exit, after the run.
    let run = cluster.rrmq(&[
        "bench",
        "produce",
        "--count",
        "10",
        "--plot",
        "/nonexistent-dir/x.svg",
    ]);
    assert_eq!(run.code, Some(1), "{}", run.describe());
    assert!(
        run.stderr.contains("cannot write the plot"),
        "{}",
        run.describe()
    );
}
