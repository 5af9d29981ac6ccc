use std::fmt::Write as _;

use super::*;

/// What h2load 1.52 printed against nginx on loopback, trimmed.
const H2LOAD_STDOUT: &str = "\
starting benchmark...
spawning thread #0: 4 total client(s). Timing-based test with 0s of warm-up time and 2s of main duration for measurements.
Main benchmark duration is over for thread #0. Stopping all clients.

finished in 2.00s, 2000.00 req/s, 134.89KB/s
requests: 4003 total, 4012 started, 4003 done, 4000 succeeded, 3 failed, 3 errored, 0 timeout
status codes: 4000 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 269.79KB (276264) total, 187.50KB (192000) headers (space savings 51.02%), 11.72KB (12000) data
                     min         max         mean         sd        +/- sd
time for request:       31us      2.64ms       242us       194us    94.65%
";

#[test]
fn h2load_rate_counts_2xx_and_percentiles_come_from_the_log() {
    // 100 requests: latencies 1..=100 µs, in shuffled order.
    let mut log = String::new();
    for latency in (1..=100).map(|i| (i * 37) % 100 + 1) {
        let _ = writeln!(log, "1796192183280205\t200\t{latency}");
    }
    let result = parse_h2load(H2LOAD_STDOUT, &log).expect("parse");
    assert_eq!(result.tool, "h2load");
    assert!((result.duration_s - 2.0).abs() < 1e-9);
    assert_eq!(result.ok, 4000);
    assert!((result.ok_per_s - 2000.0).abs() < 1e-9);
    assert!((result.tool_rps - 2000.0).abs() < 1e-9);
    assert_eq!(result.error_kinds.get("failed"), Some(&3));
    assert_eq!(result.error_kinds.get("errored"), Some(&3));
    assert_eq!(result.errors, 6);
    assert!((result.latency.p50_us - 50.0).abs() < 1e-9);
    assert!((result.latency.p99_us - 99.0).abs() < 1e-9);
    assert!((result.latency.max_us - 100.0).abs() < 1e-9);
    assert!((result.latency.mean_us - 50.5).abs() < 1e-9);
}

#[test]
fn h2load_without_a_log_or_a_summary_is_an_error() {
    assert!(parse_h2load(H2LOAD_STDOUT, "").is_err());
    assert!(parse_h2load("starting benchmark...\n", "1\t200\t5\n").is_err());
}

#[test]
fn h2load_non_2xx_responses_count_as_status_errors() {
    let stdout = H2LOAD_STDOUT
        .replace(
            "4000 succeeded, 3 failed, 3 errored",
            "4000 succeeded, 0 failed, 0 errored",
        )
        .replace(
            "4000 2xx, 0 3xx, 0 4xx, 0 5xx",
            "3990 2xx, 0 3xx, 0 4xx, 10 5xx",
        );
    let result = parse_h2load(&stdout, "1\t200\t5\n").expect("parse");
    assert_eq!(result.ok, 3990);
    assert_eq!(result.error_kinds.get("status"), Some(&10));
    assert_eq!(result.errors, 10);
}

#[test]
fn h2load_durations_in_milliseconds() {
    assert_eq!(parse_seconds("250.00ms"), Some(0.25));
    assert_eq!(parse_seconds("10.00s"), Some(10.0));
    assert_eq!(parse_seconds("10"), None);
}

#[test]
fn wrk_result_line_from_the_done_hook() {
    let stdout = "Running 2s test @ http://127.0.0.1:18081/\n  1 threads and 16 connections\n\
        Requests/sec: 107405.21\n\
        L7RESULT {\"requests\":214990,\"duration_us\":2000000,\"bytes\":1,\"connect\":0,\"read\":2,\
        \"write\":0,\"status\":10,\"timeout\":1,\"p50\":97,\"p90\":160,\"p99\":1339,\"p999\":3000,\
        \"max\":4891,\"mean\":141.178178}\n";
    let result = parse_wrk(stdout).expect("parse");
    assert_eq!(result.tool, "wrk");
    assert_eq!(result.ok, 214_980);
    assert!((result.ok_per_s - 107_490.0).abs() < 1e-6);
    assert!((result.tool_rps - 107_495.0).abs() < 1e-6);
    assert_eq!(result.errors, 13);
    assert_eq!(result.error_kinds.get("read"), Some(&2));
    assert_eq!(result.error_kinds.get("connect"), None);
    assert!((result.latency.p99_us - 1339.0).abs() < 1e-9);
    assert!(parse_wrk("Requests/sec: 1\n").is_err());
}

#[test]
fn the_wrk_script_prints_every_field_the_parser_reads() {
    for field in [
        "requests",
        "duration_us",
        "connect",
        "read",
        "write",
        "status",
        "timeout",
        "p50",
        "p90",
        "p99",
        "p999",
        "max",
        "mean",
    ] {
        assert!(WRK_SCRIPT.contains(&format!("\"{field}\":")), "{field}");
    }
    // Only `done`: a `request` or `response` hook would take wrk off its fast path.
    assert!(!WRK_SCRIPT.contains("request = function"));
    assert!(!WRK_SCRIPT.contains("response = function"));
}

#[test]
fn missing_tools_name_their_debian_packages() {
    let h2load = TOOLS
        .iter()
        .find(|t| t.program == "h2load")
        .expect("h2load");
    assert_eq!(h2load.package, "nghttp2-client");
    let nginx = TOOLS.iter().find(|t| t.program == "nginx").expect("nginx");
    assert_eq!(nginx.package, "nginx-light");
}
