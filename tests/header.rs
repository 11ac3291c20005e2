//! `include/convkit.h` is generated from `src/capi.rs` by cbindgen (configured in
//! `cbindgen.toml`): this test regenerates it and fails when the committed header differs.
//! `CONVKIT_BLESS=1` writes the fresh header instead.

#[test]
fn header_is_generated_from_the_source() {
    let root = env!("CARGO_MANIFEST_DIR");
    let config = cbindgen::Config::from_file(format!("{root}/cbindgen.toml")).unwrap();
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(format!("{root}/src/capi.rs"))
        .generate()
        .expect("cbindgen parses src/capi.rs");
    let mut out = Vec::new();
    bindings.write(&mut out);
    let fresh = String::from_utf8(out).unwrap();
    let path = format!("{root}/include/convkit.h");
    if std::env::var("CONVKIT_BLESS").is_ok() {
        std::fs::write(&path, &fresh).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap();
    assert!(
        committed == fresh,
        "include/convkit.h is stale: regenerate it with CONVKIT_BLESS=1 cargo test --release --test header"
    );
    for f in [
        "convkit_plan_create",
        "convkit_plan_create_json",
        "convkit_plan_run",
        "convkit_wisdom_export",
        "convkit_grad_create_json",
        "convkit_grad_weight",
        "ConvkitStatus_Ok",
        "ConvkitLayer",
    ] {
        assert!(fresh.contains(f), "{f} missing from the generated header");
    }
}
