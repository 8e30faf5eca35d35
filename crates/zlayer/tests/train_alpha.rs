//! `zlayer train alpha-vae` as a user runs it: the files it writes and what they say.

mod common;

use common::{repo, text, tmp, zlayer};

#[test]
fn alpha_vae_starts_from_the_rgb_vae_and_describes_itself() {
    let out = tmp("alpha-vae");
    let o = zlayer(&[
        "train",
        "alpha-vae",
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "2",
        "--batch",
        "2",
        "--heldout",
        "3",
        "--lr",
        "1e-12",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("vae.json")).unwrap()).unwrap();
    assert_eq!(meta["config"]["image_channels"], 4);
    let rgb: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("models/tiny16/vae.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        meta["latent_shift"], rgb["latent_shift"],
        "the RGB VAE's latent statistics"
    );
    let h = &meta["heldout"];
    let (a, b) = (
        h["opaque_psnr"].as_f64().unwrap(),
        h["rgb_vae_psnr"].as_f64().unwrap(),
    );
    // A step of 1e-12 leaves the opaque initialisation as it was (up to the f16 export).
    assert!((a - b).abs() < 0.05, "{a} against {b}");
    assert!(out.join("vae.ckpt.safetensors").is_file() && out.join("vae-loss.png").is_file());
    let e = text(
        &zlayer(&[
            "train",
            "alpha-vae",
            "--out",
            out.to_str().unwrap(),
            "--from",
            "nope.safetensors",
        ])
        .stderr,
    );
    assert!(e.contains("nope.safetensors"), "{e}");
}
