//! {{name}} in the wasmtrace runtime: the module `wasmtrace build` makes, started with a
//! configuration, requests through it, and what it hands the trace filter.

use wasmtrace_testing::{Action, FilterForm, FilterUnderTest};

const FORM: FilterForm = {{form}};

#[test]
fn a_request_with_the_header_tags_the_span_and_one_without_does_not() {
    let filter =
        FilterUnderTest::build(env!("CARGO_MANIFEST_DIR"), FORM, r#"{"header": "x-tenant", "attribute": "tenant.id"}"#)
            .expect("builds and starts");
    let mut tagged = filter.request(&[("x-tenant", "acme")]);
    assert_eq!(tagged.send_request_headers(), Action::Continue);
    assert_eq!(tagged.span_attributes().get("tenant.id"), Some(&"acme".into()));
    tagged.finish();

    let mut untagged = filter.request(&[]);
    assert_eq!(untagged.send_request_headers(), Action::Continue);
    assert!(untagged.span_attributes().is_empty(), "{:?}", untagged.span_attributes());
    untagged.finish();
}

#[test]
fn a_configuration_with_an_unknown_field_is_refused() {
    assert!(FilterUnderTest::build(env!("CARGO_MANIFEST_DIR"), FORM, r#"{"other": 1}"#).is_err());
}
