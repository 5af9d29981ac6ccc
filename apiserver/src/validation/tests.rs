use super::*;
use serde_json::json;

#[test]
fn secret_string_data_goes_into_data() {
    let mut s =
        json!({"metadata": {"name": "s"}, "data": {"a": "YQ=="}, "stringData": {"b": "abc"}});
    apply_defaults(&SECRETS, &mut s);
    assert_eq!(
        s,
        json!({"metadata": {"name": "s"}, "type": "Opaque", "data": {"a": "YQ==", "b": "YWJj"}})
    );
}

#[test]
fn names() {
    for (s, label, subdomain) in [
        ("web", true, true),
        ("web-1", true, true),
        ("a.b", false, true),
        ("-web", false, false),
        ("Web", false, false),
        ("", false, false),
    ] {
        assert_eq!(is_dns1123_label(s), label, "{s}");
        assert_eq!(is_dns1123_subdomain(s), subdomain, "{s}");
    }
    assert!(!valid_name(&SERVICES, "1web"));
    assert!(valid_name(&PODS, "1web.x"));
}
