//! The dated report of a `firstsync` run: Markdown for people, JSON (every start, every
//! list, every anchor try, the machine, the settings) for tools.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::anchor::Load;
use super::start::{Start, Variant};
use super::{Outcome, RunConfig};
use crate::machine::Machine;
use crate::report::{median, thousands, write_dated};
use crate::rule_loader::Backend;

/// The goal (issue 8): the first full sync programmed within this after the initial lists
/// arrived, seconds.
pub const GOAL_AFTER_LISTS_S: f64 = 1.0;

/// The settings of the run, as reported.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Method {
    /// Services in the API server.
    pub services: usize,
    /// Endpoints per Service.
    pub endpoints: usize,
    /// Rounds.
    pub rounds: usize,
    /// Whether each round restarted over its pins.
    pub restart: bool,
    /// Writes in flight while filling the API server.
    pub concurrency: usize,
    /// How often `/healthz` was asked, seconds.
    pub poll_interval_s: f64,
    /// The kube-proxy loaders, in order (empty when the anchor was skipped).
    pub anchor_loaders: Vec<String>,
    /// Tries per loader.
    pub anchor_tries: usize,
    /// A load slower than this was killed, seconds.
    pub anchor_timeout_s: f64,
    /// Extra daemon arguments.
    pub daemon_args: Vec<String>,
}

impl Method {
    /// The reported form of `config`.
    pub fn of(config: &RunConfig) -> Self {
        Self {
            services: config.services,
            endpoints: config.endpoints,
            rounds: config.rounds,
            restart: config.restart,
            concurrency: config.concurrency,
            poll_interval_s: config.poll_interval.as_secs_f64(),
            anchor_loaders: config.anchor.as_ref().map_or_else(Vec::new, |a| {
                a.backends.iter().map(|b| b.as_str().to_owned()).collect()
            }),
            anchor_tries: config.anchor.as_ref().map_or(0, |a| a.tries),
            anchor_timeout_s: config
                .anchor
                .as_ref()
                .map_or(0.0, |a| a.timeout.as_secs_f64()),
            daemon_args: config.daemon_args.clone(),
        }
    }
}

/// The medians over the rounds of one kind of start.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StartSummary {
    /// Starts that logged their first view.
    pub starts: usize,
    /// Starts that failed.
    pub failed: usize,
    /// Services in the first view, smallest over the starts (the whole cluster or not).
    pub services_min: Option<u64>,
    /// Frontends that `switchyard services` listed with every endpoint, smallest.
    pub complete_frontends_min: Option<usize>,
    /// From the last initial list to the first view in the datapath (the daemon's
    /// `after_lists`), seconds.
    pub after_lists_s: Option<f64>,
    /// Largest `after_lists` over the starts, seconds.
    pub after_lists_max_s: Option<f64>,
    /// From the daemon's `main` to the first view in the datapath (`since_start`).
    pub since_start_s: Option<f64>,
    /// From the spawn to the last initial list logged.
    pub lists_done_s: Option<f64>,
    /// From the spawn to `/healthz` answering 200.
    pub healthz_s: Option<f64>,
    /// The daemon's CPU time until then.
    pub daemon_cpu_s: Option<f64>,
    /// Links attached anew (the restart should attach none), largest.
    pub attached_links_max: Option<u64>,
    /// Warnings and errors in the logs, in all.
    pub problems: usize,
}

impl StartSummary {
    /// Summarizes the starts of `variant` in `outcome`.
    pub fn of(outcome: &Outcome, variant: Variant) -> Self {
        let starts: Vec<&Start> = outcome
            .rounds
            .iter()
            .filter_map(|r| r.start(variant))
            .collect();
        let views: Vec<_> = starts
            .iter()
            .filter_map(|s| s.log.first_view.as_ref())
            .collect();
        let values = |f: &dyn Fn(&Start) -> Option<f64>| -> Vec<f64> {
            starts.iter().filter_map(|s| f(s)).collect()
        };
        let after_lists: Vec<f64> = views
            .iter()
            .map(|v| v.after_lists_s)
            .filter(|v| v.is_finite())
            .collect();
        Self {
            starts: views.len(),
            failed: starts.iter().filter(|s| s.failure.is_some()).count(),
            services_min: views.iter().map(|v| v.services).min(),
            complete_frontends_min: starts
                .iter()
                .filter_map(|s| s.frontends.as_ref()?.as_ref().ok().map(|f| f.complete))
                .min(),
            after_lists_s: median(&after_lists),
            after_lists_max_s: after_lists.iter().copied().reduce(f64::max),
            since_start_s: median(&values(&|s| {
                s.log
                    .first_view
                    .as_ref()
                    .map(|v| v.since_start_s)
                    .filter(|v| v.is_finite())
            })),
            lists_done_s: median(&values(&|s| s.log.lists_done_s())),
            healthz_s: median(&values(&|s| s.healthz_s)),
            daemon_cpu_s: median(&values(&|s| s.daemon_cpu_s)),
            attached_links_max: starts
                .iter()
                .filter_map(|s| s.log.opened.attached_links)
                .max(),
            problems: starts.iter().map(|s| s.log.problem_count).sum(),
        }
    }
}

/// A figure measured elsewhere, quoted for reference.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Quoted {
    /// What.
    pub what: String,
    /// Seconds (a range as its ends).
    pub seconds: (f64, f64),
    /// Where it comes from.
    pub source: String,
}

/// Real kube-proxy's first sync of 10,000 Services × 3 endpoints from process start, as
/// the issue quotes it.
fn quoted() -> Vec<Quoted> {
    vec![
        Quoted {
            what: "kube-proxy 1.28, iptables-legacy, process start to first full sync".to_owned(),
            seconds: (2.6, 2.6),
            source: "issue 8 (measured on this kind of machine)".to_owned(),
        },
        Quoted {
            what: "kube-proxy 1.28, iptables-nft, process start to first full sync".to_owned(),
            seconds: (87.0, 210.0),
            source: "issue 8 (measured on this kind of machine)".to_owned(),
        },
    ]
}

/// The report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// Where and what.
    pub machine: Machine,
    /// Settings.
    pub method: Method,
    /// The cold starts summarized.
    pub cold: StartSummary,
    /// The restarts summarized.
    pub restart: StartSummary,
    /// Real kube-proxy's figures, quoted.
    pub quoted: Vec<Quoted>,
    /// `git status --porcelain` of the binary's sources at the time of the run.
    pub uncommitted_sources: Vec<String>,
    /// Everything measured.
    pub outcome: Outcome,
}

fn secs(v: Option<f64>) -> String {
    match v {
        Some(v) if v < 1.0 => format!("{:.0} ms", v * 1e3),
        Some(v) => format!("{v:.2} s"),
        None => "n/a".to_owned(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.1}×", a / b),
        _ => "n/a".to_owned(),
    }
}

fn count<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| v.to_string())
}

/// A load's median, or the limit it was killed at.
fn load_time(load: Option<&Load>) -> String {
    match load {
        Some(l) if l.median_s().is_some() => secs(l.median_s()),
        Some(Load {
            killed_after_s: Some(limit),
            ..
        }) => format!("more than {limit:.0} s (killed)"),
        _ => "n/a".to_owned(),
    }
}

/// A load's median over `base`, or at least the limit it was killed at over `base`.
fn load_ratio(load: Option<&Load>, base: Option<f64>) -> String {
    match load {
        Some(l) if l.median_s().is_some() => ratio(l.median_s(), base),
        Some(Load {
            killed_after_s: Some(limit),
            ..
        }) => format!("more than {}", ratio(Some(*limit), base)),
        _ => "n/a".to_owned(),
    }
}

impl Report {
    /// Puts the report together.
    pub fn new(
        machine: Machine,
        uncommitted_sources: Vec<String>,
        method: Method,
        outcome: Outcome,
    ) -> Self {
        Self {
            machine,
            cold: StartSummary::of(&outcome, Variant::Cold),
            restart: StartSummary::of(&outcome, Variant::Restart),
            quoted: quoted(),
            method,
            uncommitted_sources,
            outcome,
        }
    }

    /// The anchor's load of `backend`, if it ran.
    fn load(&self, backend: Backend) -> Option<&Load> {
        self.outcome.anchor.iter().find(|l| l.backend == backend)
    }

    /// Whether the goal was met: every cold start held the whole cluster in its first view
    /// and programmed it within the goal after the lists.
    pub fn goal_met(&self) -> Option<bool> {
        let max = self.cold.after_lists_max_s?;
        let whole = self.cold.services_min? >= self.method.services as u64;
        Some(whole && self.cold.failed == 0 && max < GOAL_AFTER_LISTS_S)
    }

    /// The Markdown form.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.method;
        let _ = writeln!(
            out,
            "# switchyard's first full sync: {} Services × {} endpoints from process start, {}\n",
            thousands(m.services as u64),
            m.endpoints,
            self.machine.date
        );
        self.write_summary(&mut out);
        self.write_starts(&mut out);
        self.write_anchor(&mut out);
        self.write_method(&mut out);
        self.write_problems(&mut out);
        out
    }

    fn write_summary(&self, out: &mut String) {
        let c = &self.cold;
        let goal = match self.goal_met() {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "not measured",
        };
        let _ = writeln!(
            out,
            "Goal: the first full sync programmed under {} after the initial lists arrive, holding every Service. **{goal}**: median {} after the lists (largest {}), {} from process start, over {} cold starts; the first view held {} of {} Services.\n",
            secs(Some(GOAL_AFTER_LISTS_S)),
            secs(c.after_lists_s),
            secs(c.after_lists_max_s),
            secs(c.since_start_s),
            c.starts,
            c.services_min.map_or_else(|| "n/a".to_owned(), thousands),
            thousands(self.method.services as u64),
        );
        let legacy = self.load(Backend::IptablesLegacy);
        let ipt_nft = self.load(Backend::IptablesNft);
        let nft = self.load(Backend::Nftables);
        let _ = writeln!(
            out,
            "In the same run, loading kube-proxy's rules for the same cluster from empty (the kernel's part of its first sync only) took {} with iptables-legacy-restore ({} switchyard's time after the lists), {} with iptables-nft-restore ({}) and {} with nft ({}). Real kube-proxy, process start to first full sync, as quoted in the issue: 2.6 s with iptables-legacy ({} switchyard's {} from process start) and 87–210 s with iptables-nft ({} to {}).\n",
            load_time(legacy),
            load_ratio(legacy, c.after_lists_s),
            load_time(ipt_nft),
            load_ratio(ipt_nft, c.after_lists_s),
            load_time(nft),
            load_ratio(nft, c.after_lists_s),
            ratio(Some(2.6), c.since_start_s),
            secs(c.since_start_s),
            ratio(Some(87.0), c.since_start_s),
            ratio(Some(210.0), c.since_start_s),
        );
    }

    fn write_starts(&self, out: &mut String) {
        out.push_str("## The daemon's starts (medians over the rounds)\n\n");
        out.push_str("| start | starts | Services in the first view (least) | frontends complete (least) | spawn → lists in | lists in → programmed | spawn (main) → programmed | spawn → /healthz 200 | daemon CPU | links attached (most) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for (variant, s) in [
            (Variant::Cold, &self.cold),
            (Variant::Restart, &self.restart),
        ] {
            if s.starts == 0 && s.failed == 0 {
                continue;
            }
            let _ = writeln!(
                out,
                "| {} | {}{} | {} | {} | {} | {} | {} | {} | {} | {} |",
                variant.as_str(),
                s.starts,
                if s.failed > 0 {
                    format!(" ({} failed)", s.failed)
                } else {
                    String::new()
                },
                count(s.services_min),
                count(s.complete_frontends_min),
                secs(s.lists_done_s),
                secs(s.after_lists_s),
                secs(s.since_start_s),
                secs(s.healthz_s),
                secs(s.daemon_cpu_s),
                count(s.attached_links_max),
            );
        }
        out.push('\n');
        out.push_str("Every start:\n\n| round | start | lists (kind: objects at s after the spawn) | after lists | since start | /healthz | maps (entries) |\n|---:|---|---|---:|---:|---:|---|\n");
        for round in &self.outcome.rounds {
            for variant in [Variant::Cold, Variant::Restart] {
                let Some(start) = round.start(variant) else {
                    continue;
                };
                let lists = start
                    .log
                    .lists
                    .iter()
                    .map(|l| format!("{}: {} at {:.2}", l.kind, l.objects, l.logged_s))
                    .collect::<Vec<_>>()
                    .join(", ");
                let view = start.log.first_view.as_ref();
                let maps = match &start.maps {
                    Some(Ok(d)) => d
                        .maps
                        .iter()
                        .map(|(name, n, _)| format!("{name} {n}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    Some(Err(e)) => format!("unread: {e}"),
                    None => "not read".to_owned(),
                };
                let _ = writeln!(
                    out,
                    "| {} | {}{} | {lists} | {} | {} | {} | {maps} |",
                    round.round,
                    variant.as_str(),
                    start
                        .failure
                        .as_ref()
                        .map_or_else(String::new, |f| format!(" (failed: {f})")),
                    secs(view.map(|v| v.after_lists_s)),
                    secs(view.map(|v| v.since_start_s)),
                    secs(start.healthz_s),
                );
            }
            if let Some(same) = round.maps_unchanged() {
                let _ = writeln!(
                    out,
                    "| {} | restart left the maps | {} | | | | |",
                    round.round,
                    if same {
                        "exactly as the cold start wrote them"
                    } else {
                        "**changed**"
                    }
                );
            }
        }
        out.push('\n');
    }

    fn write_anchor(&self, out: &mut String) {
        if self.outcome.anchor.is_empty() {
            return;
        }
        out.push_str(
            "## The anchor: kube-proxy's rules for the same cluster, loaded from empty\n\n",
        );
        out.push_str("The rule text is rendered beforehand, so this is only the kernel's part of kube-proxy's first sync (no informers, no computing or writing of the text): a floor under what kube-proxy takes.\n\n| loader | rule text | lines | tries | median | vs switchyard after the lists |\n|---|---:|---:|---|---:|---:|\n");
        for load in &self.outcome.anchor {
            let tries = load
                .tries_s
                .iter()
                .map(|t| secs(Some(*t)))
                .collect::<Vec<_>>()
                .join(", ");
            let extra = match (load.killed_after_s, &load.failure) {
                (Some(limit), _) => format!(" (killed at {limit:.0} s)"),
                (None, Some(f)) => format!(" (failed: {f})"),
                (None, None) => String::new(),
            };
            let _ = writeln!(
                out,
                "| {} | {:.1} MiB | {} | {tries}{extra} | {} | {} |",
                load.backend.as_str(),
                load.bytes as f64 / (1024.0 * 1024.0),
                thousands(load.lines as u64),
                load_time(Some(load)),
                load_ratio(Some(load), self.cold.after_lists_s),
            );
        }
        out.push('\n');
        out.push_str("Real kube-proxy, quoted:\n\n");
        for q in &self.quoted {
            let range = if (q.seconds.0 - q.seconds.1).abs() < f64::EPSILON {
                format!("{:.1} s", q.seconds.0)
            } else {
                format!("{:.0}–{:.0} s", q.seconds.0, q.seconds.1)
            };
            let _ = writeln!(out, "- {}: {range} ({})", q.what, q.source);
        }
        out.push('\n');
    }

    fn write_method(&self, out: &mut String) {
        let m = &self.method;
        let mc = &self.machine;
        let _ = writeln!(
            out,
            "## Method\n\n- The embedded API server (`switchyard apiserver`) in a node namespace, filled before anything is timed with {} selectorless ClusterIP Services and one EndpointSlice of {} ready endpoints each ({} writes in flight).\n- Per round, `switchyard run --proxy-mode ebpf` starts in the node namespace with empty pins (a fresh bpffs folder), its socket programs attached only to a cgroup the run made that no process joins, `--devices none`, `--sync-period 1h`; it is followed from the spawn until it has logged `first complete view programmed` and `/healthz` answers 200 (asked every {:.0} ms); `switchyard services` then lists what its maps hold. {}\n- The daemon's figures are its own log line: `after_lists` from the last initial list (Services, EndpointSlices, Nodes) to the view in the kernel's maps, `since_start` from its `main`.\n- The anchor loads kube-proxy's iptables rule shape (`iptables-legacy-restore`, `iptables-nft-restore`) and nftables shape (`nft -f`) for the same cluster from empty, {} tries each in a fresh namespace, killed after {:.0} s.\n- Daemon arguments added: `{}`.\n- Machine: {}, {} CPUs, kernel {}; switchyard {} ({} build of {}, built {}).\n",
            m.services,
            m.endpoints,
            m.concurrency,
            m.poll_interval_s * 1e3,
            if m.restart {
                "It is stopped (SIGTERM) and started again over the pins it left (the restart), then stopped and its state removed with `switchyard cleanup`."
            } else {
                "It is stopped (SIGTERM) and its state removed with `switchyard cleanup`."
            },
            m.anchor_tries,
            m.anchor_timeout_s,
            m.daemon_args.join(" "),
            mc.cpu_model,
            mc.cpus,
            mc.kernel,
            mc.switchyard_commit,
            mc.profile,
            mc.switchyard_binary,
            mc.switchyard_built,
        );
        if !self.uncommitted_sources.is_empty() {
            let _ = writeln!(
                out,
                "- Uncommitted sources at the time of the run: {}.\n",
                self.uncommitted_sources.join("; ")
            );
        }
    }

    fn write_problems(&self, out: &mut String) {
        out.push_str("## Problems\n\n");
        let mut any = false;
        if let Some(f) = &self.outcome.failure {
            let _ = writeln!(out, "- The run stopped early: {f}");
            any = true;
        }
        for round in &self.outcome.rounds {
            for variant in [Variant::Cold, Variant::Restart] {
                let Some(start) = round.start(variant) else {
                    continue;
                };
                for p in &start.log.problems {
                    let _ = writeln!(out, "- round {}, {}: `{p}`", round.round, variant.as_str());
                    any = true;
                }
            }
        }
        for load in &self.outcome.anchor {
            if let Some(f) = &load.failure {
                let _ = writeln!(out, "- anchor, {}: {f}", load.backend.as_str());
                any = true;
            }
        }
        for p in &self.outcome.apiserver_problems {
            let _ = writeln!(out, "- `{p}`");
            any = true;
        }
        if !any {
            out.push_str("- None: every start programmed its first view, every anchor load finished or hit its limit, and neither the daemon nor the API server logged a warning.\n");
        }
        out.push('\n');
    }

    /// Writes `<dir>/<date>-firstsync[-<tag>].md` and `.json`; returns their paths.
    pub fn write(&self, dir: &Path, tag: Option<&str>) -> Result<(PathBuf, PathBuf)> {
        write_dated(
            dir,
            &self.machine.date,
            "firstsync",
            tag,
            &self.markdown(),
            self,
        )
    }
}

/// One line about a start, for the progress output.
pub fn one_line(start: &Start) -> String {
    if let Some(f) = &start.failure {
        return format!("failed: {f}");
    }
    let view = start.log.first_view.as_ref();
    format!(
        "{} Services in the first view, {} after the lists, {} since start, /healthz 200 at {}",
        count(view.map(|v| v.services)),
        secs(view.map(|v| v.after_lists_s)),
        secs(view.map(|v| v.since_start_s)),
        secs(start.healthz_s),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firstsync::Round;
    use crate::firstsync::log::FirstView;

    fn start(services: u64, after_lists_s: f64) -> Start {
        let mut start = Start::default();
        start.log.first_view = Some(FirstView {
            services,
            after_lists_s,
            since_start_s: after_lists_s + 0.8,
            ..FirstView::default()
        });
        start
    }

    fn report(cold: &[(u64, f64)], anchor: Vec<Load>) -> Report {
        let outcome = Outcome {
            rounds: cold
                .iter()
                .enumerate()
                .map(|(i, &(services, after))| Round {
                    round: i + 1,
                    cold: Some(start(services, after)),
                    restart: Some(start(services, after / 2.0)),
                    ..Round::default()
                })
                .collect(),
            anchor,
            ..Outcome::default()
        };
        let method = Method {
            services: 10_000,
            endpoints: 3,
            rounds: cold.len(),
            restart: true,
            concurrency: 16,
            poll_interval_s: 0.01,
            anchor_loaders: Vec::new(),
            anchor_tries: 1,
            anchor_timeout_s: 120.0,
            daemon_args: Vec::new(),
        };
        Report::new(Machine::default(), Vec::new(), method, outcome)
    }

    #[test]
    fn the_goal_needs_every_service_in_every_cold_start_under_a_second() {
        let met = report(&[(10_000, 0.4), (10_000, 0.5), (10_000, 0.45)], Vec::new());
        assert_eq!(met.goal_met(), Some(true));
        assert_eq!(met.cold.after_lists_s, Some(0.45));
        assert_eq!(met.cold.after_lists_max_s, Some(0.5));
        assert_eq!(met.restart.after_lists_s, Some(0.225));
        assert!(met.markdown().contains("**met**"));
        // One slow start fails it, whatever the median.
        let slow = report(&[(10_000, 0.4), (10_000, 1.5), (10_000, 0.45)], Vec::new());
        assert_eq!(slow.goal_met(), Some(false));
        // So does a partial first view.
        let partial = report(&[(9_318, 0.4)], Vec::new());
        assert_eq!(partial.goal_met(), Some(false));
        assert!(partial.markdown().contains("**not met**"));
        assert_eq!(report(&[], Vec::new()).goal_met(), None);
    }

    #[test]
    fn a_killed_anchor_is_a_lower_bound() {
        let load = |backend, tries_s: Vec<f64>, killed| Load {
            backend,
            bytes: 1,
            lines: 1,
            tries_s,
            killed_after_s: killed,
            failure: None,
        };
        let r = report(
            &[(10_000, 0.5)],
            vec![
                load(Backend::IptablesLegacy, vec![2.0, 2.5, 2.25], None),
                load(Backend::Nftables, Vec::new(), Some(120.0)),
            ],
        );
        assert_eq!(load_time(r.load(Backend::IptablesLegacy)), "2.25 s");
        assert_eq!(
            load_ratio(r.load(Backend::IptablesLegacy), r.cold.after_lists_s),
            "4.5×"
        );
        assert_eq!(
            load_time(r.load(Backend::Nftables)),
            "more than 120 s (killed)"
        );
        assert_eq!(
            load_ratio(r.load(Backend::Nftables), r.cold.after_lists_s),
            "more than 240.0×"
        );
        assert_eq!(load_time(r.load(Backend::IptablesNft)), "n/a");
    }
}
