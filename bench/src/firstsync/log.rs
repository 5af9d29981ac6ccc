//! Reading the daemon's own account of its first sync out of its log (tracing's text
//! format: an RFC 3339 UTC timestamp, the level, the target, the message, then
//! `key=value` fields):
//!
//! ```text
//! 2026-12-04T10:00:00.123456Z  INFO switchyard_control::source::cluster: initial list received kind=Service objects=10000
//! 2026-12-04T10:00:00.412345Z  INFO switchyard_control::controller: first complete view programmed services=10000 frontends=10000 backends=30000 after_lists=183.2ms since_start=1.2s check_took=20.1ms
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// The message of the line that dates the first programmed view.
pub const FIRST_VIEW: &str = "first complete view programmed";
/// The message of the line logged once per watched kind when its initial list is in.
pub const INITIAL_LIST: &str = "initial list received";
/// The message of the eBPF datapath's opening line (what it found pinned).
pub const MAPS_OPENED: &str = "eBPF maps opened; state read back from the kernel";
/// The message of the socket load balancer's opening line (links reused or attached).
pub const LB_OPEN: &str = "socket load balancer open";

/// One log line, split.
#[derive(Clone, Debug, PartialEq)]
pub struct Line<'a> {
    /// Its timestamp.
    pub at: SystemTime,
    /// `INFO`, `WARN`, ...
    pub level: &'a str,
    /// The message: the text between the target and the first field.
    pub message: &'a str,
    /// Its `key=value` fields, in order.
    pub fields: BTreeMap<&'a str, &'a str>,
}

impl<'a> Line<'a> {
    /// Splits `line`; `None` for anything that is not a tracing text line.
    pub fn parse(line: &'a str) -> Option<Self> {
        let line = line.trim_end();
        let (stamp, rest) = line.split_once(' ')?;
        let at = humantime::parse_rfc3339(stamp).ok()?;
        let rest = rest.trim_start();
        let (level, rest) = rest.split_once(' ')?;
        // `target: message k=v ...`; the target has no spaces.
        let (_, rest) = rest.trim_start().split_once(": ")?;
        let mut fields = BTreeMap::new();
        let mut message_end = rest.len();
        // Fields are the trailing words with `=` that do not start inside the message; a
        // message never has a `=` here, so the first such word ends it.
        let mut offset = 0;
        for word in rest.split(' ') {
            if let Some((key, value)) = word.split_once('=')
                && !key.is_empty()
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                if fields.is_empty() {
                    message_end = offset;
                }
                fields.insert(key, value);
            }
            offset += word.len() + 1;
        }
        Some(Self {
            at,
            level,
            message: rest[..message_end.min(rest.len())].trim_end(),
            fields,
        })
    }

    /// Field `key` as a number.
    pub fn number(&self, key: &str) -> Option<u64> {
        self.fields.get(key)?.parse().ok()
    }

    /// Field `key` as a `Duration` written with `{:?}`.
    pub fn duration(&self, key: &str) -> Option<Duration> {
        parse_debug_duration(self.fields.get(key)?)
    }
}

/// Parses a `Duration` as `{:?}` prints it: `183.2ms`, `1.234567891s`, `950µs`, `12ns`.
pub fn parse_debug_duration(text: &str) -> Option<Duration> {
    let (number, unit_s) = [("ns", 1e-9), ("µs", 1e-6), ("us", 1e-6), ("ms", 1e-3)]
        .into_iter()
        .find_map(|(unit, scale)| text.strip_suffix(unit).map(|n| (n, scale)))
        .or_else(|| text.strip_suffix('s').map(|n| (n, 1.0)))?;
    let value: f64 = number.parse().ok()?;
    (value.is_finite() && value >= 0.0).then(|| Duration::from_secs_f64(value * unit_s))
}

/// The first-view line's fields.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FirstView {
    /// `services=`: Services in the view.
    pub services: u64,
    /// `frontends=`: frontends programmed.
    pub frontends: u64,
    /// `backends=`: backends over all frontends.
    pub backends: u64,
    /// `after_lists=`: from the last initial list to the view in the datapath, seconds.
    pub after_lists_s: f64,
    /// `since_start=`: from the daemon's `main` to the view in the datapath, seconds.
    pub since_start_s: f64,
    /// `check_took=`: the check against the datapath after it, seconds (if logged).
    pub check_took_s: Option<f64>,
    /// The line's own timestamp, seconds after the spawn.
    pub logged_s: f64,
}

/// One kind's initial list.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InitialList {
    /// `kind=`.
    pub kind: String,
    /// `objects=`.
    pub objects: u64,
    /// The line's timestamp, seconds after the spawn.
    pub logged_s: f64,
}

/// What the datapath found when it opened its pins.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Opened {
    /// Frontends read back from the maps.
    pub frontends: Option<u64>,
    /// Backends read back from the maps.
    pub backends: Option<u64>,
    /// Links found pinned and reused.
    pub reused_links: Option<u64>,
    /// Links attached anew.
    pub attached_links: Option<u64>,
    /// Maps found pinned and reused.
    pub reused_maps: Option<u64>,
}

/// Everything the run reads from one start's log.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StartLog {
    /// Each kind's initial list, in log order.
    pub lists: Vec<InitialList>,
    /// The first-view line, once logged.
    pub first_view: Option<FirstView>,
    /// The datapath's opening lines.
    pub opened: Opened,
    /// Warnings and errors (the first few, shortened).
    pub problems: Vec<String>,
    /// How many warnings and errors in all.
    pub problem_count: usize,
}

/// How many problem lines are kept.
const PROBLEMS_KEPT: usize = 10;

fn seconds_after(at: SystemTime, origin: SystemTime) -> f64 {
    match at.duration_since(origin) {
        Ok(d) => d.as_secs_f64(),
        Err(before) => -before.duration().as_secs_f64(),
    }
}

impl StartLog {
    /// Takes in one line of the log; `spawned` is when the process was started.
    pub fn feed(&mut self, text: &str, spawned: SystemTime) {
        if text.contains("panicked") {
            self.note_problem(text);
            return;
        }
        let Some(line) = Line::parse(text) else {
            return;
        };
        if matches!(line.level, "WARN" | "ERROR") {
            self.note_problem(text);
        }
        let logged_s = seconds_after(line.at, spawned);
        match line.message {
            INITIAL_LIST => self.lists.push(InitialList {
                kind: line.fields.get("kind").copied().unwrap_or("?").to_owned(),
                objects: line.number("objects").unwrap_or_default(),
                logged_s,
            }),
            FIRST_VIEW if self.first_view.is_none() => {
                self.first_view = Some(FirstView {
                    services: line.number("services").unwrap_or_default(),
                    frontends: line.number("frontends").unwrap_or_default(),
                    backends: line.number("backends").unwrap_or_default(),
                    after_lists_s: line
                        .duration("after_lists")
                        .map_or(f64::NAN, |d| d.as_secs_f64()),
                    since_start_s: line
                        .duration("since_start")
                        .map_or(f64::NAN, |d| d.as_secs_f64()),
                    check_took_s: line.duration("check_took").map(|d| d.as_secs_f64()),
                    logged_s,
                });
            }
            MAPS_OPENED => {
                self.opened.frontends = line.number("frontends");
                self.opened.backends = line.number("backends");
            }
            LB_OPEN => {
                self.opened.reused_links = line.number("reused_links");
                self.opened.attached_links = line.number("attached_links");
                self.opened.reused_maps = line.number("reused_maps");
            }
            _ => {}
        }
    }

    /// Counts the problems again over the whole log (lines logged after the first view
    /// included).
    pub fn recount_problems(&mut self, whole: &str) {
        self.problems.clear();
        self.problem_count = 0;
        for text in whole.lines() {
            let level = Line::parse(text).map(|l| l.level);
            if text.contains("panicked") || matches!(level, Some("WARN" | "ERROR")) {
                self.note_problem(text);
            }
        }
    }

    fn note_problem(&mut self, text: &str) {
        self.problem_count += 1;
        if self.problems.len() < PROBLEMS_KEPT {
            self.problems.push(text.chars().take(400).collect());
        }
    }

    /// Seconds from the spawn to the last initial list (all were in).
    pub fn lists_done_s(&self) -> Option<f64> {
        self.lists.iter().map(|l| l.logged_s).reduce(f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_durations_parse_in_every_unit() {
        let cases = [
            ("183.2ms", Some(183.2e-3)),
            ("1.234567891s", Some(1.234_567_891)),
            ("950µs", Some(950e-6)),
            ("12ns", Some(12e-9)),
            ("0ns", Some(0.0)),
            ("2s", Some(2.0)),
            ("fast", None),
            ("-1s", None),
            ("", None),
        ];
        for (text, want) in cases {
            let got = parse_debug_duration(text).map(|d| d.as_secs_f64());
            match (got, want) {
                (Some(got), Some(want)) => {
                    assert!((got - want).abs() < 1e-9, "{text}: {got} != {want}");
                }
                (got, want) => assert_eq!(got, want, "{text}"),
            }
        }
    }

    #[test]
    fn the_first_view_and_the_lists_are_read_relative_to_the_spawn() {
        let spawned = humantime::parse_rfc3339("2026-12-04T10:00:00.000000Z").unwrap();
        let mut log = StartLog::default();
        for line in [
            "2026-12-04T10:00:00.050000Z  INFO switchyard_control::datapath::ebpf: eBPF maps opened; state read back from the kernel frontends=10000 backends=30000",
            "2026-12-04T10:00:00.040000Z  INFO switchyard_ebpf::socket_lb: socket load balancer open pin_path=/sys/fs/bpf/x cgroup=/sys/fs/cgroup/y reused_links=8 attached_links=0 reused_maps=10",
            "2026-12-04T10:00:00.300000Z  INFO switchyard_control::source::cluster: initial list received kind=Service objects=10000",
            "2026-12-04T10:00:00.500000Z  INFO switchyard_control::source::cluster: initial list received kind=EndpointSlice objects=10000",
            "2026-12-04T10:00:00.100000Z  WARN switchyard_control::controller: something odd service=default/a",
            "not a log line at all",
            "2026-12-04T10:00:00.700000Z  INFO switchyard_control::controller: first complete view programmed services=10000 frontends=10000 backends=30000 after_lists=183.2ms since_start=1.2s check_took=20ms",
            "2026-12-04T10:00:09.000000Z  INFO switchyard_control::controller: first complete view programmed services=1 frontends=1 backends=1 after_lists=1s since_start=9s",
        ] {
            log.feed(line, spawned);
        }
        assert_eq!(log.lists.len(), 2);
        assert_eq!(log.lists[0].kind, "Service");
        assert_eq!(log.lists[1].objects, 10_000);
        assert!((log.lists_done_s().unwrap() - 0.5).abs() < 1e-9);
        let view = log.first_view.as_ref().unwrap();
        assert_eq!(
            (view.services, view.frontends, view.backends),
            (10_000, 10_000, 30_000)
        );
        assert!((view.after_lists_s - 0.1832).abs() < 1e-9);
        assert!((view.since_start_s - 1.2).abs() < 1e-9);
        assert!((view.logged_s - 0.7).abs() < 1e-9);
        assert_eq!(view.check_took_s.map(|s| (s * 1e3).round()), Some(20.0));
        assert_eq!(log.opened.frontends, Some(10_000));
        assert_eq!(log.opened.attached_links, Some(0));
        assert_eq!(log.opened.reused_maps, Some(10));
        assert_eq!(log.problem_count, 1);
    }

    #[test]
    fn a_message_with_colons_keeps_its_text_and_fields() {
        let line = Line::parse(
            "2026-12-04T10:00:00.000001Z  INFO switchyard_control::datapath::ebpf: eBPF maps opened; state read back from the kernel frontends=2 backends=6",
        )
        .unwrap();
        assert_eq!(line.message, MAPS_OPENED);
        assert_eq!(line.number("frontends"), Some(2));
        assert_eq!(line.level, "INFO");
    }
}
