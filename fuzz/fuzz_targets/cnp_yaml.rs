//! CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy YAML import: any text is either
//! imported (every spec valid) or refused with errors naming documents; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match weft_model::cnp::parse_cnp_documents(text) {
        Ok(policies) => {
            for p in &policies {
                for spec in &p.specs {
                    assert!(
                        spec.validate().is_ok(),
                        "an imported spec is valid: {spec:?}"
                    );
                }
            }
        }
        Err(errors) => assert!(!errors.is_empty(), "a refusal says why"),
    }
});
