//! Embeds the web UI gzipped (src/api/ui/index.html → $OUT_DIR/index.html.gz): served as is with
//! `Content-Encoding: gzip`, so the agent carries no compressor. The OpenAPI document is checked
//! and minified (src/api/openapi.json → $OUT_DIR/openapi.json).

use std::io::Write;

fn main() {
    let src = "src/api/ui/index.html";
    println!("cargo:rerun-if-changed={src}");
    let html = std::fs::read(src).expect("read the web UI");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&html).expect("gzip the web UI");
    let bytes = gz.finish().expect("gzip the web UI");
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    std::fs::write(out.join("index.html.gz"), bytes).expect("write the gzipped web UI");

    let doc = "src/api/openapi.json";
    println!("cargo:rerun-if-changed={doc}");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(doc).expect("read the OpenAPI document"))
            .expect("the OpenAPI document is JSON");
    std::fs::write(out.join("openapi.json"), v.to_string()).expect("write the OpenAPI document");
}
