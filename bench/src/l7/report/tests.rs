use std::time::Duration;

use super::*;
use crate::l7::load::{Latency, LoadResult};
use crate::l7::suite::{Setup, Skipped};

fn run(round: usize, target: Target, scenario: Scenario, rps: f64, p99_ms: f64) -> Measurement {
    Measurement {
        round,
        target,
        scenario,
        result: Some(LoadResult {
            tool: scenario.tool().to_owned(),
            duration_s: 10.0,
            ok: (rps * 10.0) as u64,
            ok_per_s: rps,
            tool_rps: rps,
            errors: 0,
            error_kinds: BTreeMap::new(),
            latency: Latency {
                p50_us: p99_ms * 500.0,
                p99_us: p99_ms * 1000.0,
                ..Latency::default()
            },
        }),
        failure: None,
        proxy_cpu_s: Some(5.0),
        proxy_user_s: Some(2.0),
        proxy_memory: None,
        cpu_busy: vec![0.5, 0.5],
        background_busy: vec![0.0, 0.0],
        quiet_wait_s: 0.0,
        switchyard_log: Vec::new(),
    }
}

fn method(targets: Vec<Target>) -> Method {
    Method {
        duration_s: 10.0,
        warmup_s: 2.0,
        pause_s: 1.0,
        quiet_threshold: 0.25,
        quiet_wait_s: 30.0,
        repeats: 3,
        targets,
        shape: LoadShape {
            wrk_connections: 64,
            h2_connections: 16,
            h2_streams: 4,
            cpu: 0,
            timeout: Duration::from_secs(5),
        },
        nginx_keepalive: 64,
        measure_unbalanced: false,
        proxy_cpu: 1,
        load_cpu: 0,
    }
}

fn outcome(measurements: Vec<Measurement>, skipped: Vec<Skipped>) -> Outcome {
    Outcome {
        setup: Setup {
            skipped,
            ..Setup::default()
        },
        measurements,
        proxy_threads_after: BTreeMap::new(),
        exits: BTreeMap::new(),
        switchyard_problems: Vec::new(),
    }
}

#[test]
fn ratios_to_nginx_use_medians_and_pair_rounds() {
    let mut runs = Vec::new();
    for (round, nginx, switchyard) in [
        (0, 10_000.0, 13_000.0),
        (1, 12_000.0, 15_000.0),
        (2, 11_000.0, 12_100.0),
    ] {
        runs.push(run(round, Target::Nginx, Scenario::Http1, nginx, 2.0));
        runs.push(run(
            round,
            Target::SwitchyardH2c,
            Scenario::Http1,
            switchyard,
            1.8,
        ));
    }
    let targets = vec![Target::Nginx, Target::SwitchyardH2c];
    let report = Report::new(
        Machine::default(),
        Tools::default(),
        method(targets),
        outcome(runs, Vec::new()),
    );
    let ratio = report
        .ratios
        .iter()
        .find(|r| r.target == Target::SwitchyardH2c && r.scenario == Scenario::Http1)
        .expect("a ratio");
    // Medians: 13,000 / 11,000.
    assert!((ratio.rps.expect("rps") - 13_000.0 / 11_000.0).abs() < 1e-9);
    assert!((ratio.p99.expect("p99") - 0.9).abs() < 1e-9);
    assert_eq!(ratio.rps_by_round.len(), 3);
    assert!((ratio.rps_by_round[0] - 1.3).abs() < 1e-9);
    assert!((ratio.rps_by_round[2] - 1.1).abs() < 1e-9);
    // 1.18× is short of 1.2×, whatever the p99.
    assert_eq!(ratio.goal_met, Some(false));
    let md = report.markdown();
    assert!(
        md.contains("| switchyard-h2c | http1 | 1.18× | 0.90× |"),
        "{md}"
    );
}

#[test]
fn the_goal_needs_both_the_rate_and_the_p99() {
    let mut runs = Vec::new();
    for round in 0..3 {
        runs.push(run(round, Target::Nginx, Scenario::H2c, 10_000.0, 2.0));
        runs.push(run(
            round,
            Target::SwitchyardH2c,
            Scenario::H2c,
            12_500.0,
            1.9,
        ));
        runs.push(run(
            round,
            Target::SwitchyardHttp,
            Scenario::H2c,
            12_500.0,
            2.5,
        ));
        runs.push(run(round, Target::Haproxy, Scenario::H2c, 20_000.0, 1.0));
    }
    let targets = vec![
        Target::Nginx,
        Target::Haproxy,
        Target::SwitchyardH2c,
        Target::SwitchyardHttp,
    ];
    let report = Report::new(
        Machine::default(),
        Tools::default(),
        method(targets),
        outcome(runs, Vec::new()),
    );
    let goal = |target: Target| {
        report
            .ratios
            .iter()
            .find(|r| r.target == target && r.scenario == Scenario::H2c)
            .and_then(|r| r.goal_met)
    };
    assert_eq!(goal(Target::SwitchyardH2c), Some(true));
    assert_eq!(goal(Target::SwitchyardHttp), Some(false));
    // The goal is switchyard's; HAProxy only gets its ratios.
    assert_eq!(goal(Target::Haproxy), None);
}

#[test]
fn skipped_targets_are_reported_as_not_measured() {
    let runs = vec![run(0, Target::Nginx, Scenario::Http1, 10_000.0, 2.0)];
    let skipped = vec![Skipped {
        target: Target::SwitchyardH2c,
        scenario: Scenario::Http1,
        reason: "no per-request balancing".to_owned(),
    }];
    let targets = vec![Target::Nginx, Target::SwitchyardH2c];
    let report = Report::new(
        Machine::default(),
        Tools::default(),
        method(targets),
        outcome(runs, skipped),
    );
    let row = report
        .rows
        .iter()
        .find(|r| r.target == Target::SwitchyardH2c && r.scenario == Scenario::Http1)
        .expect("a row");
    assert_eq!(
        row.stat.skipped.as_deref(),
        Some("no per-request balancing")
    );
    assert_eq!(row.stat.median, None);
    let md = report.markdown();
    assert!(md.contains("| switchyard-h2c | not measured"), "{md}");
    assert!(
        md.contains("**switchyard-h2c http1 not measured**: no per-request balancing"),
        "{md}"
    );
}

#[test]
fn peak_memory_is_the_highest_window_and_cpu_efficiency_the_median() {
    let mut runs = Vec::new();
    for (round, peak) in [(0, 10_240), (1, 20_480), (2, 15_360)] {
        let mut m = run(round, Target::Haproxy, Scenario::Http1, 10_000.0, 1.0);
        m.proxy_memory = Some(crate::l7::memory::Memory {
            peak_kib: peak,
            rss_kib: peak / 2,
            peak_kib_each: vec![peak],
        });
        runs.push(m);
    }
    let stat = Stat::of(&runs, Target::Haproxy, Scenario::Http1, 0);
    assert_eq!(stat.peak_mib, Some(20.0));
    // 100,000 responses over 5 s of proxy CPU.
    assert_eq!(stat.per_cpu_s, Some(20_000.0));
    assert_eq!(stat.proxy_cpu_pct, Some(50.0));
    // 2 s of it in user space, 3 s in the kernel: 20 µs and 30 µs per response.
    assert_eq!(stat.user_us_per_req, Some(20.0));
    assert_eq!(stat.sys_us_per_req, Some(30.0));
}

#[test]
fn cpu_per_request_is_absent_without_a_user_time() {
    let mut m = run(0, Target::Nginx, Scenario::H2c, 10_000.0, 1.0);
    m.proxy_user_s = None;
    let stat = Stat::of(&[m], Target::Nginx, Scenario::H2c, 0);
    assert_eq!(stat.per_cpu_s, Some(20_000.0));
    assert_eq!(stat.user_us_per_req, None);
    assert_eq!(stat.sys_us_per_req, None);
}

#[test]
fn a_stale_binary_is_noted_under_the_machine_table() {
    let targets = vec![Target::Nginx];
    let mut report = Report::new(
        Machine::default(),
        Tools::default(),
        method(targets),
        outcome(Vec::new(), Vec::new()),
    );
    assert!(!report.markdown().contains("**Note**"));
    report.switchyard_binary_note = Some("built before commit abc".to_owned());
    assert!(
        report
            .markdown()
            .contains("**Note**: built before commit abc.")
    );
}
