//! `zlayer generate --model flux-dev` as a user meets it without a GPU: what is missing is
//! named, and a model too large for the machine is refused before anything loads. (The
//! pipeline itself runs end to end on a toy folder in zlayer-model's tests/flux_dev.rs.)

mod common;

use common::{text, tmp, zlayer};
use std::path::Path;

/// A safetensors file holding only a header: its tensors' shapes with no data behind them.
fn header_only(path: &Path, tensors: &[(&str, Vec<usize>)]) {
    let mut h = serde_json::Map::new();
    for (name, shape) in tensors {
        h.insert(
            name.to_string(),
            serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [0, 0]}),
        );
    }
    let h = serde_json::Value::Object(h).to_string();
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend(h.as_bytes());
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// A FLUX.1-dev folder of headers whose transformer claims 10^11 weights (200 GB in bf16).
fn oversized_folder(dir: &Path) {
    header_only(
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
    let mut vae = vec![
        ("encoder.conv_in.weight", vec![128, 3, 3, 3]),
        ("decoder.conv_in.weight", vec![512, 16, 3, 3]),
        ("decoder.conv_out.weight", vec![3, 128, 3, 3]),
    ];
    let names: Vec<String> = (0..4)
        .flat_map(|i| (0..2).map(move |b| format!("encoder.down.{i}.block.{b}.conv1.weight")))
        .collect();
    for (k, n) in names.iter().enumerate() {
        vae.push((n.as_str(), vec![128 * [1, 2, 4, 4][k / 2], 128, 3, 3]));
    }
    header_only(&dir.join("ae.safetensors"), &vae);
    header_only(
        &dir.join("text_encoder_2/model.safetensors"),
        &[("shared.weight", vec![32128, 4096])],
    );
    header_only(
        &dir.join("text_encoder/model.safetensors"),
        &[(
            "text_model.embeddings.token_embedding.weight",
            vec![49408, 768],
        )],
    );
    for t in ["tokenizer", "tokenizer_2"] {
        std::fs::create_dir_all(dir.join(t)).unwrap();
        std::fs::write(dir.join(t).join("tokenizer.json"), "{}").unwrap();
    }
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
    let r = zlayer(&[
        "generate",
        "--model",
        "flux-dev",
        "--weights",
        w,
        "--device",
        "cpu",
        scene,
        "-o",
        out,
    ]);
    assert_eq!(r.status.code(), Some(2));
    let err = text(&r.stderr);
    for part in [
        "not a complete FLUX.1-dev folder",
        "ae.safetensors",
        "text_encoder_2",
        "--clip-tokenizer",
    ] {
        assert!(err.contains(part), "{part}: {err}");
    }

    oversized_folder(&weights);
    let r = zlayer(&[
        "generate",
        "--model",
        "flux-dev",
        "--weights",
        w,
        "--device",
        "cpu",
        scene,
        "-o",
        out,
    ]);
    assert_eq!(r.status.code(), Some(2));
    let err = text(&r.stderr);
    assert!(err.contains("refusing to start"), "{err}");
    assert!(
        err.contains("GiB at the peak") && err.contains("GiB free"),
        "{err}"
    );
    assert!(!out_png.exists());

    // A canvas FLUX cannot tile is named before any file is read.
    let odd = dir.join("odd.json");
    std::fs::write(
        &odd,
        r#"{"width": 500, "height": 512, "instances": [{"id": "a", "caption": "a cat", "bbox": [0, 0, 100, 100]}]}"#,
    )
    .unwrap();
    let r = zlayer(&[
        "generate",
        "--model",
        "flux-dev",
        "--weights",
        w,
        "--device",
        "cpu",
        odd.to_str().unwrap(),
        "-o",
        out,
    ]);
    assert_eq!(r.status.code(), Some(2));
    assert!(
        text(&r.stderr).contains("multiples of 16"),
        "{}",
        text(&r.stderr)
    );

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
        let r = zlayer(&[
            "generate",
            "--model",
            "flux-dev",
            "--weights",
            w,
            "--device",
            "cuda",
            scene,
            "-o",
            out,
        ]);
        assert_eq!(r.status.code(), Some(2));
        assert!(
            text(&r.stderr).contains("--features cuda"),
            "{}",
            text(&r.stderr)
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
