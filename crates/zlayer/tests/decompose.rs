//! `zlayer train layers` and `zlayer decompose` as a user runs them: the files, their layers
//! and metadata, exact resume, and the errors.

mod common;

use common::{text, tmp, zlayer};

fn ok(args: &[&str]) -> String {
    let o = zlayer(args);
    assert!(o.status.success(), "{args:?}: {}", text(&o.stderr));
    text(&o.stderr)
}

fn fails(args: &[&str]) -> String {
    let o = zlayer(args);
    assert_eq!(o.status.code(), Some(2), "{args:?} should be refused");
    text(&o.stderr)
}

#[test]
fn a_trained_layer_model_decomposes_into_files_recompose_reads() {
    let dir = tmp("decompose");
    let d = |p: &str| dir.join(p).to_str().unwrap().to_string();
    ok(&[
        "train",
        "alpha-vae",
        "--out",
        &d("alpha"),
        "--steps",
        "1",
        "--batch",
        "2",
        "--heldout",
        "1",
    ]);
    let vae = d("alpha/vae.safetensors");
    let e = fails(&[
        "train",
        "layers",
        "--vae",
        "models/tiny16/vae.safetensors",
        "--out",
        &d("x"),
    ]);
    assert!(e.contains("alpha-aware"), "{e}");
    let train = |steps: &str| {
        ok(&[
            "train",
            "layers",
            "--vae",
            &vae,
            "--out",
            &d("layers"),
            "--steps",
            steps,
            "--batch",
            "2",
            "--heldout",
            "2",
            "--sample-steps",
            "2",
        ])
    };
    let log = train("2");
    assert!(
        log.contains("layer-model") && log.contains("re-composite"),
        "{log}"
    );
    // Resuming with more steps continues from the checkpoint: every step once in the log.
    train("3");
    let csv = std::fs::read_to_string(dir.join("layers/omni-loss.csv")).unwrap();
    let steps: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(steps, ["1", "2", "3"], "{csv}");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("layers/omni.json")).unwrap())
            .unwrap();
    assert_eq!(meta["steps_trained"], 3);
    assert!(
        meta["heldout"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["method"] == "layer-model")
    );

    // eval-layers scores it beside the baselines and its VAE's own round trip.
    ok(&[
        "eval-layers",
        "--n",
        "2",
        "--layer-model",
        &d("layers"),
        "--steps",
        "2",
        "--out",
        &d("ev"),
    ]);
    let md = std::fs::read_to_string(dir.join("ev/layers-eval.md")).unwrap();
    for m in ["segmenter-cutout", "layer-model", "vae-round-trip", " dB |"] {
        assert!(md.contains(m), "{m}: {md}");
    }

    ok(&[
        "synth",
        "--n",
        "1",
        "--size",
        "64",
        "--split",
        "complex",
        "--seed",
        "7",
        "--format",
        "png",
        "--out",
        &d("syn"),
    ]);
    let scene = d("syn/000000/scene.json");
    let instances =
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&scene).unwrap())
            .unwrap()["instances"]
            .as_array()
            .unwrap()
            .len();
    let e = fails(&[
        "decompose",
        &d("syn/000000/image.png"),
        "--scene",
        &scene,
        "--layer-model",
        &d("layers"),
    ]);
    assert!(e.contains("nothing to write"), "{e}");
    let e = fails(&[
        "decompose",
        &d("syn/000000/image.png"),
        "--scene",
        &scene,
        "--layer-model",
        &d("nope"),
        "--out",
        &d("o"),
    ]);
    assert!(e.contains("omni.json") && e.contains("train layers"), "{e}");
    ok(&[
        "decompose",
        &d("syn/000000/image.png"),
        "--scene",
        &scene,
        "--layer-model",
        &d("layers"),
        "--out",
        &d("out"),
        "--ora",
        &d("l.ora"),
        "--psd",
        &d("l.psd"),
        "--sheet",
        &d("sheet.png"),
        "--steps",
        "2",
    ]);
    let plate = zlayer_composite::read_png(&dir.join("out/plate.png")).unwrap();
    assert_eq!((plate.width, plate.height), (64, 64));
    for k in 0..instances {
        assert!(dir.join(format!("out/layer-{k}.png")).is_file());
    }
    let ora = zlayer_composite::ora::read_ora(&dir.join("l.ora")).unwrap();
    assert_eq!(
        ora.layers.len(),
        instances + 1,
        "the plate and one layer per instance"
    );
    assert_eq!(ora.layers[0].name, "background plate");
    let meta: serde_json::Value = serde_json::from_str(ora.metadata.as_deref().unwrap()).unwrap();
    assert_eq!(meta["made_by"], "decompose");
    // recompose reads both files; the original order composites both the same way.
    ok(&["recompose", &d("l.ora"), "-o", &d("a.png")]);
    ok(&["recompose", &d("l.psd"), "-o", &d("b.png")]);
    let (a, b) = (
        zlayer_composite::read_png(&dir.join("a.png")).unwrap(),
        zlayer_composite::read_png(&dir.join("b.png")).unwrap(),
    );
    assert_eq!(a.pixels, b.pixels);

    // generate --layers decomposes what it drew, at the scene's canvas.
    let generate = |extra: &[&str]| {
        let base = [
            "generate",
            "examples/sphere-cube.json",
            "-o",
            &d("g.png"),
            "--steps",
            "2",
        ];
        zlayer(&[&base[..], extra].concat())
    };
    let o = generate(&[
        "--layers",
        &d("g"),
        "--layer-model",
        &d("layers"),
        "--ora",
        &d("g.ora"),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    for f in ["plate.png", "layer-0.png", "layer-1.png"] {
        let img = zlayer_composite::read_png(&dir.join("g").join(f)).unwrap();
        assert_eq!((img.width, img.height), (512, 512), "{f}");
    }
    let names: Vec<String> = zlayer_composite::ora::read_ora(&dir.join("g.ora"))
        .unwrap()
        .layers
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert_eq!(
        names,
        ["background plate", "1: blue cube", "0: red sphere"],
        "bottom first"
    );
    let o = generate(&["--layers", &d("g"), "--layer-model", "none"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("--maps"), "{}", text(&o.stderr));
}
