//! The walker's reading rules, one by one, and its refusals.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Errors, Node};

/// The messages reported, as `path: message`.
fn reported(errors: &Errors) -> Vec<String> {
    errors.0.iter().map(|e| format!("{}: {}", e.path, e.message)).collect()
}

#[test]
fn a_field_is_found_by_its_proto_name_or_its_json_name() {
    let value = json!({"statPrefix": "x", "route_config": {}, "http2ProtocolOptions": {}});
    let root = Node::root(&value);
    assert_eq!(root.get("stat_prefix").map(|n| n.path().to_owned()), Some("statPrefix".into()));
    assert_eq!(root.get("route_config").map(|n| n.path().to_owned()), Some("route_config".into()));
    assert!(root.get("http2_protocol_options").is_some());
    let mut errors = Errors::default();
    root.expect_fields(&mut errors, &["stat_prefix", "route_config", "http2_protocol_options"], "");
    assert!(errors.0.is_empty(), "{:?}", reported(&errors));
}

#[test]
fn only_protoc_json_names_count_as_the_second_spelling() {
    // `stat_Prefix`, `StatPrefix` and `statprefix` are neither spelling of `stat_prefix`.
    let value = json!({"stat_Prefix": "x", "StatPrefix": "x", "statprefix": "x"});
    let root = Node::root(&value);
    assert!(root.get("stat_prefix").is_none());
    let mut errors = Errors::default();
    root.expect_fields(&mut errors, &["stat_prefix"], "");
    assert_eq!(errors.0.len(), 3, "{:?}", reported(&errors));
}

#[test]
fn a_map_key_with_upper_case_letters_matches_exactly() {
    // typed_extension_protocol_options is keyed by type names, which have no `_` to drop.
    let key = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
    let value = json!({ key: {} });
    let root = Node::root(&value);
    assert!(root.get(key).is_some());
    let mut errors = Errors::default();
    root.expect_fields(&mut errors, &[key], "");
    assert!(errors.0.is_empty(), "{:?}", reported(&errors));
}

#[test]
fn a_field_given_in_both_spellings_is_refused() {
    let value = json!({"stat_prefix": "a", "statPrefix": "b"});
    let mut errors = Errors::default();
    Node::root(&value).expect_fields(&mut errors, &["stat_prefix"], "");
    assert_eq!(reported(&errors), ["statPrefix: is `stat_prefix` again, in its JSON spelling"]);
}

#[test]
fn a_single_value_stands_for_a_one_element_list() {
    let value = json!({"listeners": {"name": "main"}, "domains": "*"});
    let root = Node::root(&value);
    let mut errors = Errors::default();
    let listeners = root.get("listeners").map(|l| l.items(&mut errors)).unwrap_or_default();
    assert_eq!(listeners.len(), 1);
    assert_eq!(listeners[0].path(), "listeners");
    assert_eq!(listeners[0].get("name").and_then(|n| n.value().as_str()), Some("main"));
    let domains = root.get("domains").map(|d| d.items(&mut errors)).unwrap_or_default();
    assert_eq!(domains.iter().map(|d| d.value().clone()).collect::<Vec<_>>(), [json!("*")]);
    assert!(errors.0.is_empty());
}

#[test]
fn a_list_nested_in_a_list_is_spliced_in_and_a_null_item_refused() {
    let value = json!({"domains": [["a", "b"], "c", [["d"]], null]});
    let mut errors = Errors::default();
    let items = Node::root(&value).get("domains").map(|d| d.items(&mut errors)).unwrap_or_default();
    let paths: Vec<&str> = items.iter().map(Node::path).collect();
    assert_eq!(paths, ["domains[0][0]", "domains[0][1]", "domains[1]", "domains[2][0][0]"]);
    assert_eq!(reported(&errors), ["domains[3]: is null"]);
}

fn duration(value: &Value) -> (Option<Duration>, Vec<String>) {
    let mut errors = Errors::default();
    let parsed = Node::root(value).duration(&mut errors);
    (parsed, reported(&errors))
}

#[test]
fn durations_take_the_string_and_the_message_form() {
    for (value, expected) in [
        (json!("0.25s"), Duration::from_millis(250)),
        (json!("1.5s"), Duration::from_millis(1500)),
        (json!("5s"), Duration::from_secs(5)),
        (json!({"seconds": 2, "nanos": 500_000_000}), Duration::from_millis(2500)),
        (json!({"seconds": "2"}), Duration::from_secs(2)),
        (json!({"nanos": "250000000"}), Duration::from_millis(250)),
        (json!({"seconds": 3.0}), Duration::from_secs(3)),
        (json!({}), Duration::ZERO),
    ] {
        assert_eq!(duration(&value), (Some(expected), vec![]), "{value}");
    }
}

#[test]
fn durations_envoy_refuses_are_refused_with_what_is_wrong() {
    for (value, message) in [
        (json!("1000ms"), "(document): expected a duration such as \"0.25s\", found `1000ms`"),
        (json!("1m"), "(document): expected a duration such as \"0.25s\", found `1m`"),
        (json!("5 minutes"), "(document): expected a duration such as \"0.25s\", found `5 minutes`"),
        (json!(5), "(document): expected a duration such as \"5s\", found a bare number"),
        (json!(true), "(document): expected a duration such as \"0.25s\""),
        (json!("-1s"), "(document): is a negative duration"),
        (json!({"seconds": 1, "nanos": -1}), "(document): is a negative duration"),
        (json!({"seconds": 1, "nanos": 1_000_000_000}), "(document): `nanos` must be from 0 to 999999999"),
        (json!("9223372037s"), "(document): is longer than Envoy accepts (9223372036s, about 292 years)"),
        (json!({"seconds": 1.5}), "seconds: expected a whole number (an int64)"),
        (json!({"nanos": 3_000_000_000_u64}), "nanos: expected a whole number (an int32)"),
        (json!({"seconds": " 1"}), "seconds: expected a whole number (an int64)"),
    ] {
        assert_eq!(duration(&value), (None, vec![message.to_owned()]), "{value}");
    }
    let (parsed, errors) = duration(&json!({"seconds": 1, "milliseconds": 5}));
    assert_eq!(parsed, Some(Duration::from_secs(1)));
    assert_eq!(errors, ["milliseconds: is not supported by wasmtrace"]);
}

#[test]
fn enum_names_match_in_any_case_and_come_back_as_envoy_spells_them() {
    let mut errors = Errors::default();
    let lower = json!("strict_dns");
    let allowed = ["STATIC", "STRICT_DNS"];
    assert_eq!(Node::root(&lower).enumeration(&mut errors, &allowed).as_deref(), Some("STRICT_DNS"));
    let unknown = json!("EDS");
    assert_eq!(Node::root(&unknown).enumeration(&mut errors, &allowed), None);
    assert_eq!(reported(&errors), ["(document): `EDS` is not supported"]);
}

#[test]
fn booleans_and_integers_take_the_strings_protobuf_reads() {
    let mut errors = Errors::default();
    for (value, expected) in [
        (json!(true), true),
        (json!("true"), true),
        (json!("Yes"), true),
        (json!("1"), true),
        (json!("on"), true),
        (json!("f"), false),
        (json!("NO"), false),
        (json!("off"), false),
    ] {
        assert_eq!(Node::root(&value).boolean(&mut errors), Some(expected), "{value}");
    }
    assert_eq!(Node::root(&json!("maybe")).boolean(&mut errors), None);
    for (value, expected) in [(json!(80), 80), (json!("80"), 80), (json!(80.0), 80)] {
        assert_eq!(Node::root(&value).unsigned(&mut errors, 65535), Some(expected), "{value}");
    }
    for value in [json!(80.5), json!(" 80"), json!(-1), json!(65536), json!("0x50")] {
        assert_eq!(Node::root(&value).unsigned(&mut errors, 65535), None, "{value}");
    }
    assert_eq!(errors.0.len(), 6, "{:?}", reported(&errors));
}
