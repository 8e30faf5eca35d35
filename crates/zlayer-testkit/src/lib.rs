//! Test helpers shared by zlayer's crates.
//!
//! The real-world fixtures (the OcclusionFormer authors' layout files, the official parity
//! run, matting references) live in `../shared/fixtures` beside the repository and are read in
//! place, never copied in. A user's clone has no `../shared`: tests that need it skip with a
//! notice. Under `CI=true` its absence is a failure, so CI can never go green by skipping.
#![warn(missing_docs)]

pub mod webdriver;

use std::path::{Path, PathBuf};

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
    absent(
        &format!("fixtures folder {}", dir.display()),
        "a test (it exists beside zlayer's own checkout)",
    );
    None
}

/// Says that `what`, which `skipped` needs, is missing: a failure under `CI=true`, so CI can
/// never go green by skipping, and a printed notice elsewhere.
pub fn absent(what: &str, skipped: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what} is missing, and under CI=true a missing test input is a failure");
    }
    // Written to the stream directly: libtest captures `eprintln!`, and a skip must be seen.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "notice: skipping {skipped}: {what} is absent"
    );
}

/// Writes a safetensors file holding only a header: bf16 tensors of these shapes with no data
/// behind them, for code that must size a checkpoint without reading it.
pub fn header_only(path: &Path, tensors: &[(&str, Vec<usize>)]) {
    let entries: Vec<String> = tensors
        .iter()
        .map(|(name, shape)| {
            let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
            format!(
                r#""{name}":{{"dtype":"BF16","shape":[{}],"data_offsets":[0,0]}}"#,
                dims.join(",")
            )
        })
        .collect();
    let header = format!("{{{}}}", entries.join(","));
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    std::fs::create_dir_all(path.parent().expect("a file path")).expect("create the folder");
    std::fs::write(path, bytes).expect("write the header");
}

/// Header-only files of FLUX.1-dev's VAE (`ae.safetensors`: its real first and last layers,
/// 83,819,683 weights in all), T5-XXL encoder (4,762,310,656) and CLIP-L text model
/// (123,060,480) in `dir`, with placeholder `tokenizer.json` files: a download but for the
/// transformer, which the caller adds.
pub fn flux_dev_headers(dir: &Path) {
    let mut vae: Vec<(String, Vec<usize>)> = vec![
        ("encoder.conv_in.weight".into(), vec![128, 3, 3, 3]),
        ("decoder.conv_in.weight".into(), vec![512, 16, 3, 3]),
        ("decoder.conv_out.weight".into(), vec![3, 128, 3, 3]),
    ];
    for (i, m) in [1, 2, 4, 4].iter().enumerate() {
        for b in 0..2 {
            let name = format!("encoder.down.{i}.block.{b}.conv1.weight");
            vae.push((name, vec![128 * m, 128, 3, 3]));
        }
    }
    let listed: usize = vae.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    vae.push(("rest".into(), vec![83_819_683 - listed]));
    let vae: Vec<(&str, Vec<usize>)> = vae.iter().map(|(k, s)| (k.as_str(), s.clone())).collect();
    header_only(&dir.join("ae.safetensors"), &vae);
    header_only(
        &dir.join("text_encoder_2/model.safetensors"),
        &[("shared.weight", vec![4_762_310_656])],
    );
    header_only(
        &dir.join("text_encoder/model.safetensors"),
        &[("text_model.weights", vec![123_060_480])],
    );
    for t in ["tokenizer", "tokenizer_2"] {
        std::fs::create_dir_all(dir.join(t)).expect("create the folder");
        std::fs::write(dir.join(t).join("tokenizer.json"), "{}").expect("write");
    }
}
