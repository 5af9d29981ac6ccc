use std::mem::{offset_of, size_of};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::raw::{
    SyAffinity, SyAffinityKey, SyBackend, SyCt, SyCtRev, SyFlow, SyFrontend, SyFrontendKey,
    SyMaglevChunk, SyMaglevKey, SyRevnat, SyRevnatKey, SySlot, SySlotKey, SySrcrangeKey,
};
use super::*;

mod c {
    include!(concat!(env!("OUT_DIR"), "/layout.rs"));
}

/// `(offset, size)` of a field of a Rust mirror, or of the whole struct for
/// field `""`; `None` for a name the mirrors do not have.
fn rust_layout(strukt: &str, field: &str) -> Option<(usize, usize)> {
    macro_rules! layout {
        ($($c:literal => $ty:ty { $($f:ident),* }),* $(,)?) => {
            match (strukt, field) {
                $(
                    ($c, "") => Some((0, size_of::<$ty>())),
                    $(
                        ($c, stringify!($f)) => Some((
                            offset_of!($ty, $f),
                            size_of_val(&<$ty>::default().$f),
                        )),
                    )*
                )*
                _ => None,
            }
        };
    }
    layout! {
        "sy_frontend_key" => SyFrontendKey { addr, port, proto, family },
        "sy_frontend" => SyFrontend { service_id, count, flags, affinity_timeout, maglev_size, snat_addr, kind, pad },
        "sy_slot_key" => SySlotKey { service_id, slot },
        "sy_slot" => SySlot { backend_id },
        "sy_backend" => SyBackend { addr, port, family, state },
        "sy_maglev_key" => SyMaglevKey { service_id, chunk },
        "sy_maglev_chunk" => SyMaglevChunk { backend_id },
        "sy_srcrange_key" => SySrcrangeKey { prefixlen, service_id, addr },
        "sy_flow" => SyFlow { saddr, daddr, sport, dport, proto, family, pad },
        "sy_ct" => SyCt { last_seen_ns, backend, snat_addr, backend_port, snat_port, backend_id, family, flags, pad },
        "sy_ct_rev" => SyCtRev { last_seen_ns, client, frontend, client_port, frontend_port, family, flags, pad },
        "sy_affinity_key" => SyAffinityKey { client_cookie, service_id, pad },
        "sy_affinity" => SyAffinity { last_used_ns, backend_id, pad },
        "sy_revnat_key" => SyRevnatKey { cookie, addr, port, family, pad },
        "sy_revnat" => SyRevnat { addr, port, family, pad },
    }
}

#[test]
fn rust_mirrors_match_the_c_header() {
    assert!(!c::C_LAYOUT.is_empty());
    for &(strukt, field, offset, size) in c::C_LAYOUT {
        let rust = rust_layout(strukt, field)
            .unwrap_or_else(|| panic!("{strukt}.{field} has no Rust mirror"));
        assert_eq!(
            rust,
            (offset, size),
            "{strukt}.{field}: Rust (offset, size) vs C"
        );
    }
}

#[test]
fn every_struct_is_packed_without_implicit_padding() {
    // aya::Pod promises every byte is initialised: holes would break that.
    for &(strukt, field, _, size) in c::C_LAYOUT {
        if !field.is_empty() {
            continue;
        }
        let fields: usize = c::C_LAYOUT
            .iter()
            .filter(|(s, f, _, _)| *s == strukt && !f.is_empty())
            .map(|(_, _, _, size)| size)
            .sum();
        assert_eq!(fields, size, "{strukt} has implicit padding");
    }
}

#[test]
fn every_rust_field_is_in_the_c_header() {
    // The other direction: a field added to a mirror but not to the header.
    let count = |strukt: &str| {
        c::C_LAYOUT
            .iter()
            .filter(|(s, f, _, _)| *s == strukt && !f.is_empty())
            .count()
    };
    assert_eq!(count("sy_frontend_key"), 4);
    assert_eq!(count("sy_frontend"), 8);
    assert_eq!(count("sy_slot_key"), 2);
    assert_eq!(count("sy_slot"), 1);
    assert_eq!(count("sy_backend"), 4);
    assert_eq!(count("sy_maglev_key"), 2);
    assert_eq!(count("sy_affinity_key"), 3);
    assert_eq!(count("sy_affinity"), 3);
    assert_eq!(count("sy_revnat_key"), 5);
    assert_eq!(count("sy_revnat"), 4);
    assert_eq!(count("sy_maglev_chunk"), 1);
    assert_eq!(count("sy_srcrange_key"), 3);
    assert_eq!(count("sy_flow"), 7);
    assert_eq!(count("sy_ct"), 9);
    assert_eq!(count("sy_ct_rev"), 8);
}

#[test]
fn constants_match_the_c_header() {
    for &(name, value) in c::C_CONSTANTS {
        let rust = match name {
            "SY_FAMILY_V4" => u64::from(FAMILY_V4),
            "SY_FAMILY_V6" => u64::from(FAMILY_V6),
            "SY_F_AFFINITY" => u64::from(FLAG_AFFINITY),
            "SY_F_MAGLEV" => u64::from(FLAG_MAGLEV),
            "SY_F_DROP" => u64::from(FLAG_DROP),
            "SY_F_SRC_RANGES" => u64::from(FLAG_SRC_RANGES),
            "SY_KIND_CLUSTER_IP" => u64::from(FrontendKind::ClusterIp.to_raw()),
            "SY_KIND_NODE_PORT" => u64::from(FrontendKind::NodePort.to_raw()),
            "SY_KIND_EXTERNAL_IP" => u64::from(FrontendKind::ExternalIp.to_raw()),
            "SY_KIND_LOAD_BALANCER" => u64::from(FrontendKind::LoadBalancer.to_raw()),
            "SY_B_TERMINATING" => u64::from(BACKEND_TERMINATING),
            "SY_B_LOCAL" => u64::from(BACKEND_LOCAL),
            "SY_MAGLEV_CHUNK" => MAGLEV_CHUNK as u64,
            "SY_CT_SNAT" => 1,
            "SY_CT_CLOSING" => 2,
            "SY_STAT_NS_FLOWS" => u64::from(stat::NS_FLOWS),
            "SY_STAT_NS_DENIED" => u64::from(stat::NS_DENIED),
            "SY_STAT_NS_SNAT_FAILED" => u64::from(stat::NS_SNAT_FAILED),
            "SY_STAT_NS_PACKETS" => u64::from(stat::NS_PACKETS),
            "SY_STAT_XDP_TX" => u64::from(stat::XDP_TX),
            "SY_STAT_DSR" => u64::from(stat::DSR),
            "SY_F_DSR" => u64::from(FLAG_DSR),
            "SY_DSR_OPT_TYPE" => 0x9a,
            "SY_DSR_OPT_LEN" => 8,
            "SY_CT_DSR" => 4,
            "SY_STAT_TRANSLATED" => u64::from(stat::TRANSLATED),
            "SY_STAT_NO_BACKEND" => u64::from(stat::NO_BACKEND),
            "SY_STAT_BACKEND_MISSING" => u64::from(stat::BACKEND_MISSING),
            "SY_STAT_REVNAT" => u64::from(stat::REVNAT),
            "SY_STAT_MAX" => u64::from(stat::MAX),
            other => panic!("constant {other} has no Rust mirror"),
        };
        assert_eq!(rust, value, "{name}");
    }
}

#[test]
fn ipv4_frontend_key_is_network_order_in_the_first_four_bytes() {
    let key = FrontendKey::new(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)), 80, Proto::Tcp);
    let raw = SyFrontendKey::from(key);
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&[10, 96, 0, 10]);
    assert_eq!(raw.addr, addr);
    assert_eq!(raw.port.to_ne_bytes(), [0, 80], "port in network order");
    assert_eq!(raw.proto, 6);
    assert_eq!(raw.family, 4);
    assert_eq!(FrontendKey::try_from(raw), Ok(key));
}

#[test]
fn ipv6_frontend_key_round_trips() {
    let ip: Ipv6Addr = "fd00:96::10".parse().unwrap();
    let key = FrontendKey::new(IpAddr::V6(ip), 0x1234, Proto::Udp);
    let raw = SyFrontendKey::from(key);
    assert_eq!(raw.addr, ip.octets());
    assert_eq!(raw.port.to_ne_bytes(), [0x12, 0x34]);
    assert_eq!(raw.proto, 17);
    assert_eq!(raw.family, 6);
    assert_eq!(FrontendKey::try_from(raw), Ok(key));
}

#[test]
fn backend_round_trips_with_state() {
    for (addr, state) in [
        ("10.244.0.10:8080", BackendState::Active),
        ("[fd00:244::10]:5353", BackendState::Terminating),
    ] {
        let value = BackendValue {
            addr: addr.parse().unwrap(),
            state,
            local: state == BackendState::Active,
        };
        let raw = SyBackend::from(value);
        assert_eq!(
            raw.port.to_ne_bytes(),
            value.addr.port().to_be_bytes(),
            "{addr}"
        );
        assert_eq!(BackendValue::try_from(raw), Ok(value));
    }
    let v4 = SyBackend::from(BackendValue::active("10.244.0.11:80".parse().unwrap()));
    assert_eq!(&v4.addr[..4], &[10, 244, 0, 11]);
    assert!(v4.addr[4..].iter().all(|b| *b == 0));
    assert_eq!((v4.family, v4.state), (4, 0));
}

#[test]
fn invalid_raw_entries_are_errors_not_garbage() {
    let mut raw = SyFrontendKey::from(FrontendKey::new(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        1,
        Proto::Tcp,
    ));
    raw.family = 5;
    assert_eq!(FrontendKey::try_from(raw), Err(DecodeError::Family(5)));
    raw.family = 4;
    raw.proto = 1;
    assert_eq!(FrontendKey::try_from(raw), Err(DecodeError::Proto(1)));
    let mut backend = SyBackend::from(BackendValue::active(SocketAddr::from(([1, 2, 3, 4], 5))));
    backend.state = 9;
    assert_eq!(BackendValue::try_from(backend), Err(DecodeError::State(9)));
    let mut frontend = SyFrontend::from(FrontendValue::default());
    frontend.kind = 7;
    assert_eq!(FrontendValue::try_from(frontend), Err(DecodeError::Kind(7)));
}

#[test]
fn frontend_value_is_host_order() {
    let value = FrontendValue {
        service_id: 0x0102_0304,
        count: 3,
        flags: FLAG_AFFINITY | FLAG_MAGLEV,
        affinity_timeout: 10800,
        maglev_size: 1021,
        snat: Some(IpAddr::V4(Ipv4Addr::new(192, 168, 0, 10))),
        kind: FrontendKind::NodePort,
    };
    let raw = SyFrontend::from(value);
    assert_eq!(raw.service_id, 0x0102_0304);
    assert_eq!(raw.affinity_timeout, 10800);
    assert_eq!(&raw.snat_addr[..5], &[192, 168, 0, 10, 0]);
    assert_eq!(raw.kind, 1);
    assert_eq!(FrontendValue::try_from(raw), Ok(value));
    let v6 = FrontendValue {
        snat: Some("fd00:192::10".parse().unwrap()),
        ..value
    };
    assert_eq!(FrontendValue::try_from(SyFrontend::from(v6)), Ok(v6));
    let none = FrontendValue {
        snat: None,
        ..value
    };
    assert_eq!(FrontendValue::try_from(SyFrontend::from(none)), Ok(none));
}

#[test]
fn keys_display_what_they_name() {
    let key = FrontendKey::new("fd00:96::10".parse().unwrap(), 53, Proto::Udp);
    assert_eq!(key.to_string(), "[fd00:96::10]:53/udp");
    assert_eq!(SlotKey::new(7, 2).to_string(), "service 7 slot 2");
    assert_eq!(MaglevKey::new(7, 3).to_string(), "service 7 maglev chunk 3");
}
