//! `zlayer generate --model flux-dev` as a user meets it without a GPU: what is missing is
//! named, and a model too large for the machine is refused before anything loads. (The
//! pipeline itself runs end to end on a toy folder in zlayer-model's tests/flux_dev.rs.)

mod common;

use common::{text, tmp, zlayer};
use std::path::Path;

/// A FLUX.1-dev folder of headers whose transformer claims 10^11 weights (200 GB in bf16).
fn oversized_folder(dir: &Path) {
    zlayer_testkit::header_only(
        &dir.join("transformer/diffusion_pytorch_model.safetensors"),
        &[("x_embedder.weight", vec![100_000, 1_000_000])],
    );
    std::fs::write(
        dir.join("transformer/config.json"),
        serde_json::json!({
            "attention_head_dim": 128, "axes_dims_rope": [16, 56, 56], "guidance_embeds": true,
            "in_channels": 64, "joint_attention_dim": 4096, "num_attention_heads": 24,
            "num_layers": 19, "num_single_layers": 38, "patch_size": 1,
            "pooled_projection_dim": 768
        })
        .to_string(),
    )
    .unwrap();
    zlayer_testkit::flux_dev_headers(dir);
}

#[test]
fn flux_dev_names_what_is_missing_and_refuses_what_does_not_fit() {
    let dir = tmp("flux");
    let out_png = dir.join("out.png");
    let out = out_png.to_str().unwrap();
    let scene = "examples/sphere-cube.json";

    let r = zlayer(&["generate", "--model", "flux-dev", scene, "-o", out]);
    assert_eq!(r.status.code(), Some(2));
    assert!(
        text(&r.stderr).contains("needs --weights DIR"),
        "{}",
        text(&r.stderr)
    );

    let weights = dir.join("FLUX.1-dev");
    std::fs::create_dir_all(&weights).unwrap();
    let w = weights.to_str().unwrap();
    // `generate --model flux-dev` on `device` and `scene`: its message, once it has failed as
    // a user error.
    let flux_dev = |device: &str, scene: &str| {
        let r = zlayer(&[
            "generate",
            "--model",
            "flux-dev",
            "--weights",
            w,
            "--device",
            device,
            scene,
            "-o",
            out,
        ]);
        assert_eq!(r.status.code(), Some(2), "{}", text(&r.stderr));
        text(&r.stderr)
    };
    let err = flux_dev("cpu", scene);
    for part in [
        "not a complete FLUX.1-dev folder",
        "ae.safetensors",
        "text_encoder_2",
        "--clip-tokenizer",
    ] {
        assert!(err.contains(part), "{part}: {err}");
    }

    oversized_folder(&weights);
    let err = flux_dev("cpu", scene);
    assert!(err.contains("refusing to start"), "{err}");
    assert!(
        err.contains("GiB at the peak") && err.contains("GiB free"),
        "{err}"
    );
    assert!(!out_png.exists());

    // A canvas FLUX cannot tile is named before any weight is read.
    let odd = dir.join("odd.json");
    std::fs::write(
        &odd,
        r#"{"width": 500, "height": 512, "instances": [{"id": "a", "caption": "a cat", "bbox": [0, 0, 100, 100]}]}"#,
    )
    .unwrap();
    let err = flux_dev("cpu", odd.to_str().unwrap());
    assert!(err.contains("multiples of 16"), "{err}");

    // The flux-dev flags mean nothing to the tiny model, and say so.
    let r = zlayer(&[
        "generate",
        "--prompt",
        "a red sphere",
        "--weights",
        w,
        "-o",
        out,
    ]);
    assert_eq!(r.status.code(), Some(2));
    assert!(
        text(&r.stderr).contains("--weights is for --model flux-dev"),
        "{}",
        text(&r.stderr)
    );

    #[cfg(not(feature = "cuda"))]
    {
        let err = flux_dev("cuda", scene);
        assert!(err.contains("--features cuda"), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
