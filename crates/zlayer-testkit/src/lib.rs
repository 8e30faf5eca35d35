//! Test helpers shared by zlayer's crates.
//!
//! The real-world fixtures (the OcclusionFormer authors' layout files, the official parity
//! run, matting references) live in `../shared/fixtures` beside the repository and are read in
//! place, never copied in. A user's clone has no `../shared`: tests that need it skip with a
//! notice. Under `CI=true` its absence is a failure, so CI can never go green by skipping.
#![warn(missing_docs)]

use std::path::PathBuf;

/// The `shared/fixtures/<sub>` folder, or `None` (with a printed notice) when it is absent
/// outside CI. Panics under `CI=true` when it is absent. `ZLAYER_SHARED` overrides the
/// location of `shared/`.
pub fn fixtures(sub: &str) -> Option<PathBuf> {
    let shared = std::env::var_os("ZLAYER_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    let dir = shared.join("fixtures").join(sub);
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "fixtures folder {} is missing; CI must run with shared/ beside the repository",
            dir.display()
        );
    }
    // Written to the stream directly: libtest captures `eprintln!`, and a skip must be seen.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "notice: skipping a test, fixtures folder {} is absent (it exists beside zlayer's own checkout)",
        dir.display()
    );
    None
}
