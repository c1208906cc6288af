//! Build script.
//!
//! 1. When DuckDB is linked as a shared library (the default, see the `bundled` feature),
//!    embed its folder as an rpath so binaries and tests run without LD_LIBRARY_PATH.
//! 2. Embed the SQL rules (`sql/`, `sql/checks/`) and the data model (`schemas/datatypes/`)
//!    into the binary, so an installed connector needs no files beside it. The lists are
//!    generated here because a folder's files can't be listed by `include_str!`.
//! 3. Embed Redoc's bundle for `/docs` (below).

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DUCKDB_LIB_DIR");
    if std::env::var_os("CARGO_FEATURE_BUNDLED").is_none()
        && let Ok(dir) = std::env::var("DUCKDB_LIB_DIR")
    {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    let root = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let root = Path::new(&root);
    let mut out = String::new();
    embed(&mut out, "EMBEDDED_RULES", &root.join("sql"), "sql");
    embed(&mut out, "EMBEDDED_CHECKS", &root.join("sql/checks"), "sql");
    embed(
        &mut out,
        "EMBEDDED_DATA_TYPES",
        &root.join("schemas/datatypes"),
        "toml",
    );
    let dest =
        Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("embedded.rs");
    std::fs::write(dest, out).expect("write embedded.rs");
    redoc();
}

/// 3. Embed Redoc's standalone bundle (`CONNECTOR_REDOC_JS`, fetched from npm by `make npm`)
///    for the server's `/docs` page; without it, `/docs` says where the document is instead.
fn redoc() {
    println!("cargo:rerun-if-env-changed=CONNECTOR_REDOC_JS");
    let bundle = std::env::var("CONNECTOR_REDOC_JS")
        .ok()
        .filter(|p| Path::new(p).is_file());
    let code = match bundle {
        Some(path) => {
            println!("cargo:rerun-if-changed={path}");
            format!("Some(include_str!({path:?}))")
        }
        None => "None".to_owned(),
    };
    let dest = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("redoc.rs");
    std::fs::write(
        dest,
        format!("/// Redoc's standalone bundle, when the build had it.\npub const REDOC_JS: Option<&str> = {code};\n"),
    )
    .expect("write redoc.rs");
}

/// Writes `pub const NAME: &[(&str, &str)]` = (file name, contents), sorted by file name.
fn embed(out: &mut String, name: &str, dir: &Path, ext: &str) {
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == ext))
        .collect();
    files.sort();
    writeln!(out, "/// Embedded copies of `{}/*.{ext}`.", dir.display()).unwrap();
    writeln!(out, "pub const {name}: &[(&str, &str)] = &[").unwrap();
    for f in files {
        println!("cargo:rerun-if-changed={}", f.display());
        let file = f.file_name().unwrap().to_string_lossy();
        writeln!(
            out,
            "    ({file:?}, include_str!({:?})),",
            f.display().to_string()
        )
        .unwrap();
    }
    writeln!(out, "];").unwrap();
}
