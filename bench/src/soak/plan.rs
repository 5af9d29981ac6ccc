//! The soak's cluster and its churn, as data: which Services exist, which of them are the
//! sample Services served by real pods, which Service the next change goes to, and what each
//! Service's Pods are. No I/O: the engine ([`super::churn`]) carries the steps out against the
//! API server, and this module says what they are and what the datapath must then hold.
//!
//! Every change is one endpoint changing state. A *lifecycle* is four of them, spaced out in
//! time, on one Service:
//!
//! - **replace** (every Service): a new Pod is created not ready; it is made ready; the
//!   Service's oldest ready Pod is deleted with a grace period (its endpoint turns
//!   `ready=false, serving=true, terminating=true`); the API server removes it when the grace
//!   period ends. A sample Service's Pods alternate between its two real pod servers, so its one
//!   ready endpoint always answers.
//! - **decoy** (sample Services only): a Pod with a fake address (nothing routes to it) is
//!   created not ready, deleted with a grace period (terminating, not serving), then marked
//!   ready while terminating (`serving=true, terminating=true`), and removed. A datapath that
//!   ever sent a connection to a not-ready or terminating endpoint while a ready one exists
//!   would send it to the decoy, and the client would fail: real addresses would hide that
//!   mistake, fake ones show it.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// The namespace of every object.
pub const NAMESPACE: &str = "default";
/// Every Service's port.
pub const SERVICE_PORT: u16 = 80;
/// Every Pod's port (what `pod-server` listens on).
pub const TARGET_PORT: u16 = switchyard_tests::topology::POD_HTTP_PORT;
/// The Service port's name.
pub const PORT_NAME: &str = "http";
/// The node every Pod is on.
pub const NODE: &str = "node-0";
/// The first fake Pod address; the others count up from it. Nothing routes there: the client
/// namespace only routes the Service and real pod CIDRs.
pub const FIRST_FAKE_IP: Ipv4Addr = Ipv4Addr::new(10, 225, 0, 0);
/// At most this many Services fit the address plan of [`vip`].
pub const MAX_SERVICES: usize = 60_000;
/// Endpoint changes per lifecycle.
pub const CHANGES_PER_LIFECYCLE: usize = 4;

/// Service `index`'s name, `svc-<index>`.
pub fn service_name(index: usize) -> String {
    format!("svc-{index}")
}

/// Service `index`'s cluster IP: `10.96.1.1` upward, 250 per third octet (never `10.96.0.x`,
/// where the API server's own `kubernetes` Service may sit).
pub fn vip(index: usize) -> Ipv4Addr {
    assert!(index < MAX_SERVICES, "{index} is beyond the address plan");
    let third = u8::try_from(1 + index / 250).expect("MAX_SERVICES fits the third octet");
    let fourth = u8::try_from(index % 250 + 1).expect("below 251");
    Ipv4Addr::new(10, 96, third, fourth)
}

/// Fake Pod address `n` (`10.225.0.1` upward).
pub fn fake_ip(n: u64) -> Ipv4Addr {
    let n = u32::try_from(n + 1).expect("fewer than 2^32 fake Pods");
    Ipv4Addr::from(u32::from(FIRST_FAKE_IP).wrapping_add(n))
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The order in which Services get their lifecycles: `cursor * stride mod services`, with a
/// stride coprime to the count so that every Service comes once per round, and far from 1 so
/// that neighbours (and the sample Services, spread evenly) are not hit in a burst.
#[derive(Clone, Debug)]
pub struct Schedule {
    services: usize,
    stride: usize,
    cursor: usize,
}

impl Schedule {
    /// The order over `services` Services (at least one).
    pub fn new(services: usize) -> Self {
        assert!(services > 0, "a schedule needs a Service");
        // Near the golden ratio of the count, the first coprime one.
        let mut stride = (services as f64 * 0.618) as usize;
        stride = stride.max(1);
        while gcd(stride, services) != 1 {
            stride += 1;
        }
        Self {
            services,
            stride,
            cursor: 0,
        }
    }

    /// The next Service.
    pub fn next_service(&mut self) -> usize {
        let service = (self.cursor % self.services) * self.stride % self.services;
        self.cursor = self.cursor.wrapping_add(1);
        service
    }
}

/// One Pod of a Service, as the engine last wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodState {
    /// Its name, `svc-<service>-<generation>`.
    pub name: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its `Ready` condition.
    pub ready: bool,
    /// Deleted with a grace period, not removed yet.
    pub terminating: bool,
    /// A real pod server's address (it answers).
    pub real: bool,
}

impl PodState {
    /// The endpoint's `ready` condition, as the EndpointSlice controller derives it.
    pub fn endpoint_ready(&self) -> bool {
        self.ready && !self.terminating
    }

    /// The endpoint's `serving` condition.
    pub fn endpoint_serving(&self) -> bool {
        self.ready
    }
}

/// The addresses a datapath must send new connections to, given a Service's Pods: the ready
/// endpoints; when there are none, the serving and terminating ones (kube-proxy's rule).
pub fn usable_backends<'a>(pods: impl IntoIterator<Item = &'a PodState>) -> BTreeSet<Ipv4Addr> {
    let pods: Vec<&PodState> = pods.into_iter().collect();
    let ready: BTreeSet<Ipv4Addr> = pods
        .iter()
        .filter(|p| p.endpoint_ready())
        .map(|p| p.ip)
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    pods.iter()
        .filter(|p| p.endpoint_serving() && p.terminating)
        .map(|p| p.ip)
        .collect()
}

/// What a Service is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceKind {
    /// Every endpoint has a fake address; nothing connects to it.
    Fake,
    /// Sample Service `sample`, served by two real pod servers, `real[0]` and `real[1]`
    /// (address, the name the server answers with), one of them ready at any time.
    Sample {
        /// Its position among the sample Services.
        sample: usize,
        /// The two real pods.
        real: [(Ipv4Addr, String); 2],
    },
}

/// The kind of a lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LifecycleKind {
    /// A new Pod replaces the oldest ready one.
    Replace,
    /// A fake Pod that is never ready while not terminating (sample Services).
    Decoy,
}

/// A lifecycle's plan: the Pod it creates and the one it retires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lifecycle {
    /// Its Service.
    pub service: usize,
    /// Replace or decoy.
    pub kind: LifecycleKind,
    /// The Pod created (not ready).
    pub new_pod: PodState,
    /// The Pod deleted in step 3 of a replace (`None` for a decoy, which deletes its own).
    pub old_pod: Option<String>,
    /// For a sample Service's replace: the name the new pod's server answers with (the
    /// engine's probe waits for it).
    pub probe_name: Option<String>,
}

/// One Service's state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceState {
    /// Its index.
    pub index: usize,
    /// Fake or sample.
    pub kind: ServiceKind,
    /// Its Pods, oldest first.
    pub pods: Vec<PodState>,
    /// The next Pod's generation (its name's suffix).
    pub generation: u64,
    /// A lifecycle is running on it.
    pub busy: bool,
    /// Which real pod serves now (sample Services).
    pub real_slot: usize,
    /// Lifecycles started on it.
    pub lifecycles: u64,
}

impl ServiceState {
    fn next_name(&mut self) -> String {
        let name = format!("{}-{}", service_name(self.index), self.generation);
        self.generation += 1;
        name
    }

    /// Plans the next lifecycle (and marks the Service busy): `fake` hands out the next fake
    /// address. A sample Service alternates replace and decoy.
    pub fn plan(&mut self, fake: &mut impl FnMut() -> Ipv4Addr) -> Lifecycle {
        self.busy = true;
        self.lifecycles += 1;
        let name = self.next_name();
        let oldest_ready = self
            .pods
            .iter()
            .find(|p| p.endpoint_ready())
            .map(|p| p.name.clone());
        match &self.kind {
            ServiceKind::Fake => Lifecycle {
                service: self.index,
                kind: LifecycleKind::Replace,
                new_pod: PodState {
                    name,
                    ip: fake(),
                    ready: false,
                    terminating: false,
                    real: false,
                },
                old_pod: oldest_ready,
                probe_name: None,
            },
            ServiceKind::Sample { real, .. } => {
                // Lifecycles 1, 3, 5, ... replace the real pod; 2, 4, ... are decoys.
                if self.lifecycles % 2 == 1 {
                    let (ip, server) = real[1 - self.real_slot].clone();
                    Lifecycle {
                        service: self.index,
                        kind: LifecycleKind::Replace,
                        new_pod: PodState {
                            name,
                            ip,
                            ready: false,
                            terminating: false,
                            real: true,
                        },
                        old_pod: oldest_ready,
                        probe_name: Some(server),
                    }
                } else {
                    Lifecycle {
                        service: self.index,
                        kind: LifecycleKind::Decoy,
                        new_pod: PodState {
                            name,
                            ip: fake(),
                            ready: false,
                            terminating: false,
                            real: false,
                        },
                        old_pod: None,
                        probe_name: None,
                    }
                }
            }
        }
    }

    fn pod_mut(&mut self, name: &str) -> Option<&mut PodState> {
        self.pods.iter_mut().find(|p| p.name == name)
    }

    /// A Pod was created.
    pub fn created(&mut self, pod: PodState) {
        self.pods.push(pod);
    }

    /// A Pod was made ready; a sample Service's real pod then serves.
    pub fn made_ready(&mut self, name: &str) {
        let real = self.real_pod_slot(name);
        if let Some(pod) = self.pod_mut(name) {
            pod.ready = true;
        }
        if let Some(slot) = real {
            self.real_slot = slot;
        }
    }

    fn real_pod_slot(&self, name: &str) -> Option<usize> {
        let ServiceKind::Sample { real, .. } = &self.kind else {
            return None;
        };
        let pod = self.pods.iter().find(|p| p.name == name && p.real)?;
        real.iter().position(|(ip, _)| *ip == pod.ip)
    }

    /// A Pod was deleted with a grace period.
    pub fn deleting(&mut self, name: &str) {
        if let Some(pod) = self.pod_mut(name) {
            pod.terminating = true;
        }
    }

    /// A Pod is gone (its grace period ended, or it never got created).
    pub fn removed(&mut self, name: &str) {
        self.pods.retain(|p| p.name != name);
    }

    /// What the datapath must use for this Service now.
    pub fn usable(&self) -> BTreeSet<Ipv4Addr> {
        usable_backends(&self.pods)
    }
}

/// The soak's cluster: `services` Services, of which `samples` are served by real pods.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    /// How many Services.
    pub services: usize,
    /// Ready Pods of every fake Service in the steady state.
    pub endpoints_per_service: usize,
    /// The sample Services' indices, spread evenly.
    pub samples: Vec<usize>,
}

impl Plan {
    /// `services` Services with `endpoints_per_service` ready fake Pods each, but `samples` of
    /// them (spread evenly) with one ready real Pod.
    pub fn new(services: usize, samples: usize, endpoints_per_service: usize) -> Self {
        assert!(
            (1..=MAX_SERVICES).contains(&services),
            "1 to {MAX_SERVICES} Services fit the address plan"
        );
        assert!(samples <= services, "more sample Services than Services");
        let samples = (0..samples)
            .map(|k| k * services / samples.max(1) + services / (2 * samples.max(1)))
            .collect();
        Self {
            services,
            endpoints_per_service,
            samples,
        }
    }

    /// The position of Service `index` among the sample Services, if it is one.
    pub fn sample_of(&self, index: usize) -> Option<usize> {
        self.samples.iter().position(|&s| s == index)
    }

    /// Every Service in its initial state: fake Services with their ready fake Pods (addresses
    /// from `fake`), sample Services with one ready Pod on their first real pod. `real(k)` gives
    /// sample `k`'s two real pods (address, server name).
    pub fn initial(
        &self,
        fake: &mut impl FnMut() -> Ipv4Addr,
        real: impl Fn(usize) -> [(Ipv4Addr, String); 2],
    ) -> Vec<ServiceState> {
        (0..self.services)
            .map(|index| {
                let kind = match self.sample_of(index) {
                    Some(sample) => ServiceKind::Sample {
                        sample,
                        real: real(sample),
                    },
                    None => ServiceKind::Fake,
                };
                let mut state = ServiceState {
                    index,
                    kind,
                    pods: Vec::new(),
                    generation: 0,
                    busy: false,
                    real_slot: 0,
                    lifecycles: 0,
                };
                let first: Vec<(Ipv4Addr, bool)> = match &state.kind {
                    ServiceKind::Fake => (0..self.endpoints_per_service)
                        .map(|_| (fake(), false))
                        .collect(),
                    ServiceKind::Sample { real, .. } => vec![(real[0].0, true)],
                };
                for (ip, is_real) in first {
                    let name = state.next_name();
                    state.pods.push(PodState {
                        name,
                        ip,
                        ready: true,
                        terminating: false,
                        real: is_real,
                    });
                }
                state
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn real(k: usize) -> [(Ipv4Addr, String); 2] {
        let a = u8::try_from(10 + 2 * k).unwrap();
        [
            (Ipv4Addr::new(10, 244, 0, a), format!("web-0-{}", 2 * k)),
            (
                Ipv4Addr::new(10, 244, 0, a + 1),
                format!("web-0-{}", 2 * k + 1),
            ),
        ]
    }

    fn counter() -> impl FnMut() -> Ipv4Addr {
        let mut n = 0;
        move || {
            n += 1;
            fake_ip(n - 1)
        }
    }

    #[test]
    fn addresses_follow_the_plan() {
        assert_eq!(vip(0), Ipv4Addr::new(10, 96, 1, 1));
        assert_eq!(vip(249), Ipv4Addr::new(10, 96, 1, 250));
        assert_eq!(vip(250), Ipv4Addr::new(10, 96, 2, 1));
        assert_eq!(vip(MAX_SERVICES - 1), Ipv4Addr::new(10, 96, 240, 250));
        assert_eq!(fake_ip(0), Ipv4Addr::new(10, 225, 0, 1));
        assert_eq!(fake_ip(255), Ipv4Addr::new(10, 225, 1, 0));
    }

    #[test]
    fn the_schedule_visits_every_service_once_per_round() {
        for services in [1, 2, 10, 16, 1000, 1024, 7919] {
            let mut schedule = Schedule::new(services);
            let round: BTreeSet<usize> = (0..services).map(|_| schedule.next_service()).collect();
            assert_eq!(round.len(), services, "{services} Services");
            // The next round is the same order again.
            let mut again = Schedule::new(services);
            let first: Vec<usize> = (0..services).map(|_| again.next_service()).collect();
            let second: Vec<usize> = (0..services).map(|_| again.next_service()).collect();
            assert_eq!(first, second);
        }
        // Neighbours in the order are far apart.
        let mut schedule = Schedule::new(1000);
        let (a, b) = (schedule.next_service(), schedule.next_service());
        assert!(a.abs_diff(b) > 100, "{a} then {b}");
    }

    #[test]
    fn samples_are_spread_and_distinct() {
        let plan = Plan::new(1000, 16, 5);
        assert_eq!(plan.samples.len(), 16);
        assert_eq!(plan.samples[0], 31);
        assert_eq!(plan.samples[15], 968);
        let distinct: BTreeSet<usize> = plan.samples.iter().copied().collect();
        assert_eq!(distinct.len(), 16);
        assert_eq!(plan.sample_of(31), Some(0));
        assert_eq!(plan.sample_of(30), None);
        // As many samples as Services: every Service is one.
        let all = Plan::new(4, 4, 1);
        assert_eq!(all.samples, vec![0, 1, 2, 3]);
    }

    #[test]
    fn the_initial_state_has_ready_fake_pods_and_one_real_pod_per_sample() {
        let plan = Plan::new(10, 2, 3);
        let services = plan.initial(&mut counter(), real);
        let fake_pods: usize = services
            .iter()
            .filter(|s| s.kind == ServiceKind::Fake)
            .map(|s| s.pods.len())
            .sum();
        assert_eq!(fake_pods, 8 * 3);
        let sample = &services[plan.samples[1]];
        assert_eq!(
            sample.usable(),
            BTreeSet::from([Ipv4Addr::new(10, 244, 0, 12)])
        );
        let names: BTreeSet<&str> = services
            .iter()
            .flat_map(|s| s.pods.iter().map(|p| p.name.as_str()))
            .collect();
        assert_eq!(names.len(), 8 * 3 + 2, "Pod names are unique");
    }

    #[test]
    fn a_replace_keeps_a_ready_endpoint_at_every_step() {
        let plan = Plan::new(4, 1, 2);
        let mut fake = counter();
        let mut services = plan.initial(&mut fake, real);
        let s = &mut services[1];
        let before = s.usable();
        let life = s.plan(&mut fake);
        assert!(s.busy);
        assert_eq!(life.kind, LifecycleKind::Replace);
        let old = life.old_pod.clone().expect("an oldest ready Pod");
        assert_eq!(old, "svc-1-0");
        s.created(life.new_pod.clone());
        assert_eq!(s.usable(), before, "a not-ready Pod is not used");
        s.made_ready(&life.new_pod.name);
        assert_eq!(s.usable().len(), 3);
        s.deleting(&old);
        assert_eq!(s.usable().len(), 2, "a terminating Pod is not used");
        assert!(!s.usable().contains(&before.iter().next().copied().unwrap()));
        s.removed(&old);
        assert_eq!(s.pods.len(), 2);
    }

    #[test]
    fn a_sample_service_alternates_its_real_pods_and_decoys() {
        let plan = Plan::new(4, 1, 2);
        let mut fake = counter();
        let mut services = plan.initial(&mut fake, real);
        let index = plan.samples[0];
        let s = &mut services[index];
        let a = Ipv4Addr::new(10, 244, 0, 10);
        let b = Ipv4Addr::new(10, 244, 0, 11);
        // Replace: the other real pod comes, the first goes.
        let life = s.plan(&mut fake);
        assert_eq!(life.kind, LifecycleKind::Replace);
        assert_eq!(life.new_pod.ip, b);
        assert_eq!(life.probe_name.as_deref(), Some("web-0-1"));
        s.created(life.new_pod.clone());
        s.made_ready(&life.new_pod.name);
        assert_eq!(s.real_slot, 1);
        let old = life.old_pod.unwrap();
        s.deleting(&old);
        assert_eq!(s.usable(), BTreeSet::from([b]));
        s.removed(&old);
        s.busy = false;
        // Decoy: created, terminating, then serving while terminating: never used.
        let decoy = s.plan(&mut fake);
        assert_eq!(decoy.kind, LifecycleKind::Decoy);
        assert!(!decoy.new_pod.real);
        s.created(decoy.new_pod.clone());
        assert_eq!(s.usable(), BTreeSet::from([b]));
        s.deleting(&decoy.new_pod.name);
        assert_eq!(s.usable(), BTreeSet::from([b]));
        s.made_ready(&decoy.new_pod.name);
        assert_eq!(s.usable(), BTreeSet::from([b]));
        assert_eq!(s.real_slot, 1, "a decoy is not a real pod");
        s.removed(&decoy.new_pod.name);
        s.busy = false;
        // The next replace goes back to the first real pod.
        let back = s.plan(&mut fake);
        assert_eq!(back.new_pod.ip, a);
        assert_eq!(back.probe_name.as_deref(), Some("web-0-0"));
    }

    #[test]
    fn serving_terminating_endpoints_are_the_fallback() {
        let pod = |ip: u8, ready, terminating| PodState {
            name: format!("p{ip}"),
            ip: Ipv4Addr::new(10, 225, 0, ip),
            ready,
            terminating,
            real: false,
        };
        let only_terminating = [
            pod(1, true, true),
            pod(2, false, true),
            pod(3, false, false),
        ];
        assert_eq!(
            usable_backends(&only_terminating),
            BTreeSet::from([Ipv4Addr::new(10, 225, 0, 1)])
        );
        let with_ready = [pod(1, true, true), pod(4, true, false)];
        assert_eq!(
            usable_backends(&with_ready),
            BTreeSet::from([Ipv4Addr::new(10, 225, 0, 4)])
        );
        assert!(usable_backends(&[pod(3, false, false)]).is_empty());
    }
}
