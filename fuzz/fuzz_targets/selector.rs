//! Label selectors in query syntax (`selector=`, `labels=`): a parsed selector is valid by
//! the same rules as one given in a body, and matching it never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_model::selector::LabelSelector;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(selector) = LabelSelector::parse_query(text) else {
        return;
    };
    let errors = selector.validate("selector");
    assert!(
        errors.is_empty(),
        "{text:?} parsed into an invalid selector: {errors:?}"
    );
    let labels = [("app", "web"), ("k8s:tier", "db"), ("env", "")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let _ = selector.matches(&labels);
});
