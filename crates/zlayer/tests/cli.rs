//! The `zlayer` command as a user runs it: exit codes, messages, files written.

mod common;

use common::{repo, text, tmp, zlayer};
use std::path::{Path, PathBuf};

#[test]
fn every_example_validates_except_the_cycle() {
    for entry in std::fs::read_dir(repo().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let out = zlayer(&["validate", path.to_str().unwrap()]);
        let stderr = text(&out.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        if path.file_name().unwrap() == "cycle-rejected.json" {
            assert_eq!(out.status.code(), Some(2));
            assert!(
                stderr.contains("occlusion cycle: \"a\" (red sphere) occludes \"b\""),
                "{stderr}"
            );
        } else {
            assert_eq!(out.status.code(), Some(0), "{}: {stderr}", path.display());
            assert!(stderr.contains("valid"), "{stderr}");
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert!(
                v["instances"].is_array(),
                "stdout is the normalised native scene"
            );
        }
    }
}

#[test]
fn validate_json_reports_diagnostics_for_machines() {
    let out = zlayer(&["validate", "--json", "examples/cycle-rejected.json"]);
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["diagnostics"][0]["severity"], "error");
    assert_eq!(v["diagnostics"][0]["path"], "instances[0].occludes");
    assert_eq!(v["diagnostics"][0]["instance"], "a");

    let out = zlayer(&["validate", "--json", "examples/three-level-stack.json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["format"], "native");
    assert_eq!(v["depth_levels"], serde_json::json!([2, 1, 0]));
    assert_eq!(v["draw_order"], serde_json::json!([0, 1, 2]));
}

#[test]
fn missing_and_broken_files_are_user_errors() {
    let out = zlayer(&["validate", "no/such/scene.json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).starts_with("no/such/scene.json: error: cannot read the file"),
        "{}",
        text(&out.stderr)
    );

    let dir = tmp("broken");
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"width\": 10,").unwrap();
    let out = zlayer(&["validate", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("malformed JSON"));

    std::fs::write(&bad, [0xff, 0xfe, 0x00]).unwrap();
    let out = zlayer(&[
        "preview",
        bad.to_str().unwrap(),
        "-o",
        dir.join("x.png").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("not UTF-8"));
}

#[test]
fn convert_larender_to_the_official_format_and_back() {
    let dir = tmp("convert");
    let of = dir.join("of.json");
    let out = zlayer(&[
        "convert",
        "examples/larender-still-life.json",
        "--to",
        "occlusionformer",
        "-o",
        of.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&of).unwrap()).unwrap();
    // LaRender's last object is front-most: the stick covers both others.
    assert_eq!(v["annos"][2]["occludes"], "1,2");
    let out = zlayer(&["convert", of.to_str().unwrap(), "--to", "native"]);
    assert_eq!(out.status.code(), Some(0));
    let n: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(n["instances"][2]["occludes"], serde_json::json!(["1", "2"]));
}

#[test]
fn preview_writes_a_png_of_the_requested_size() {
    let dir = tmp("preview");
    let png = dir.join("p.png");
    let out = zlayer(&[
        "preview",
        "examples/dense-8.json",
        "-o",
        png.to_str().unwrap(),
        "--size",
        "300",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let img = zlayer_composite::read_png(&png).unwrap();
    assert_eq!(img.width, 300);
    assert!(img.height > 300, "a legend strip sits below the canvas");
    let out = zlayer(&[
        "preview",
        "examples/cycle-rejected.json",
        "-o",
        png.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "a rejected scene is not drawn");
}

#[test]
fn preview_matches_the_golden_image() {
    let golden = repo().join("crates/zlayer/tests/golden/preview-sphere-cube.png");
    let dir = tmp("golden");
    let png = dir.join("p.png");
    let out = zlayer(&[
        "preview",
        "examples/sphere-cube.json",
        "-o",
        png.to_str().unwrap(),
        "--size",
        "256",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    if std::env::var_os("ZLAYER_BLESS").is_some() {
        std::fs::copy(&png, &golden).unwrap();
    }
    let (got, want) = (
        zlayer_composite::read_png(&png).unwrap(),
        zlayer_composite::read_png(&golden).unwrap(),
    );
    assert_eq!((got.width, got.height), (want.width, want.height));
    let differing = got
        .pixels
        .iter()
        .zip(&want.pixels)
        .filter(|(a, b)| {
            a.0.iter()
                .zip(b.0)
                .any(|(x, y)| (x - y).abs() > 2.0 / 255.0)
        })
        .count();
    assert!(
        differing * 1000 < got.pixels.len(),
        "{differing} pixels differ from the golden image; run with ZLAYER_BLESS=1 after checking the new one"
    );
}

#[test]
fn compose_png_ora_and_psd() {
    let dir = tmp("compose");
    let mk = |name: &str, rgba: [f32; 4]| {
        let p = dir.join(name);
        let img = zlayer_composite::Image {
            width: 4,
            height: 3,
            pixels: vec![zlayer_composite::Straight(rgba); 12],
        };
        zlayer_composite::write_png(&p, &img, zlayer_composite::BitDepth::Eight).unwrap();
        p.to_str().unwrap().to_string()
    };
    let back = mk("back.png", [0.0, 0.0, 1.0, 1.0]);
    let front = mk("front.png", [1.0, 0.0, 0.0, 0.6]);
    let flat = dir.join("flat.png");
    let out = zlayer(&["compose", &back, &front, "-o", flat.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let img = zlayer_composite::read_png(&flat).unwrap();
    let p = img.pixels[0].0;
    assert!(
        (p[0] - 0.6).abs() < 0.003 && (p[2] - 0.4).abs() < 0.003 && p[3] == 1.0,
        "{p:?}"
    );

    let ora = dir.join("stack.ora");
    let out = zlayer(&["compose", &back, &front, "-o", ora.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let stack = zlayer_composite::ora::read_ora(&ora).unwrap();
    assert_eq!(
        stack
            .layers
            .iter()
            .map(|l| l.name.as_str())
            .collect::<Vec<_>>(),
        ["back", "front"]
    );
    let psd = dir.join("stack.psd");
    let out = zlayer(&["compose", &back, &front, "-o", psd.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let layered = zlayer_composite::psd::read_psd(&psd).unwrap();
    assert_eq!(layered, {
        // 8-bit channels: the stack as read from the ORA's 8-bit PNGs.
        let mut s = stack.clone();
        for l in &mut s.layers {
            for p in &mut l.image.pixels {
                p.0 =
                    p.0.map(|c| zlayer_composite::rgba::quantize8(c) as f32 / 255.0);
            }
        }
        s
    });

    let out = zlayer(&["compose", &back, "-o", dir.join("x.jpg").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains(".png (flattened), .ora (OpenRaster) or .psd"));
    let out = zlayer(&["compose", "missing.png", "-o", flat.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("missing.png"));
}

#[test]
fn help_teaches_with_examples() {
    let out = zlayer(&["--help"]);
    let s = text(&out.stdout);
    for needle in [
        "validate",
        "preview",
        "convert",
        "compose",
        "Examples:",
        "OcclusionFormer",
    ] {
        assert!(s.contains(needle), "missing {needle:?} in --help:\n{s}");
    }
    let out = zlayer(&["preview", "--help"]);
    assert!(text(&out.stdout).contains("magenta"));
    let out = zlayer(&["eval", "--help"]);
    assert!(text(&out.stdout).contains("zlayer eval --suite paper --report docs"));
}

#[test]
fn synth_writes_a_dataset_and_resumes() {
    let dir = tmp("synth");
    let out = dir.join("data");
    let args = [
        "synth",
        "--n",
        "25",
        "--size",
        "32",
        "--split",
        "regular",
        "--seed",
        "3",
        "--shard-size",
        "10",
        "--out",
        out.to_str().unwrap(),
    ];
    let run = zlayer(&args);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    assert!(
        text(&run.stderr).contains("wrote 25 scenes"),
        "{}",
        text(&run.stderr)
    );
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("dataset.json")).unwrap()).unwrap();
    assert_eq!(
        info["dataset"]["shards"],
        serde_json::json!(["shard-00000", "shard-00001", "shard-00002"])
    );
    assert!(info["vocabulary"]["shapes"].as_array().unwrap().len() >= 10);
    let first = std::fs::read(out.join("shard-00001.safetensors")).unwrap();
    // A second run finds every shard complete and rewrites nothing.
    std::fs::remove_file(out.join("shard-00002.jsonl")).unwrap();
    let again = zlayer(&args);
    assert!(
        text(&again.stderr).contains("wrote 5 scenes")
            && text(&again.stderr).contains("20 already there"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(
        std::fs::read(out.join("shard-00001.safetensors")).unwrap(),
        first
    );
    assert!(out.join("shard-00002.jsonl").exists());
}

#[test]
fn synth_png_sheet_vocab_and_mode_errors() {
    let dir = tmp("synth-modes");
    let run = zlayer(&[
        "synth",
        "--n",
        "2",
        "--format",
        "png",
        "--size",
        "32",
        "--out",
        dir.join("png").to_str().unwrap(),
    ]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    assert!(
        dir.join("png/000001/image.png").exists() && dir.join("png/000001/scene.json").exists()
    );
    let sheet = dir.join("sheet.png");
    let run = zlayer(&[
        "synth",
        "--show",
        "4",
        "--split",
        "simple",
        "-o",
        sheet.to_str().unwrap(),
    ]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    assert!(zlayer_composite::read_png(&sheet).unwrap().width > 256);
    let run = zlayer(&["synth", "--vocab"]);
    let v: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(v["grammar"], "<colour> [<pattern>] [glass] <shape>");
    let run = zlayer(&["synth", "--show", "4"]);
    assert_eq!(run.status.code(), Some(2));
    assert!(text(&run.stderr).contains("--show needs -o"));
    let run = zlayer(&["synth"]);
    assert_eq!(run.status.code(), Some(2));
    assert!(text(&run.stderr).contains("choose one mode"));
}

#[test]
fn eval_scores_ground_truth_against_itself_and_names_bad_input() {
    let dir = tmp("eval");
    let gt = dir.join("gt");
    let run = zlayer(&[
        "synth",
        "--n",
        "12",
        "--split",
        "regular",
        "--format",
        "png",
        "--out",
        gt.join("regular").to_str().unwrap(),
    ]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    let out = dir.join("out");
    let run = zlayer(&[
        "eval",
        "--pred",
        gt.to_str().unwrap(),
        "--gt",
        gt.to_str().unwrap(),
        "--split",
        "regular",
        "--plot",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    assert!(
        text(&run.stdout).contains("| order acc. | Occ. F1 |"),
        "{}",
        text(&run.stdout)
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["summary"]["scenes"], 12);
    assert_eq!(
        std::fs::read_to_string(out.join("per_scene.csv"))
            .unwrap()
            .lines()
            .count(),
        13
    );
    assert!(out.join("metrics.png").exists() && out.join("halo.png").exists());
    // The ground-truth folders hold masks, so ground truth against itself is perfect.
    assert_eq!(summary["summary"]["order_accuracy"], 1.0);
    assert_eq!(summary["summary"]["mask_miou"], 1.0);

    let run = zlayer(&[
        "eval",
        "--pred",
        dir.to_str().unwrap(),
        "--gt",
        gt.join("regular").to_str().unwrap(),
    ]);
    assert_eq!(run.status.code(), Some(2));
    assert!(
        text(&run.stderr).contains("no prediction for scene"),
        "{}",
        text(&run.stderr)
    );
    let run = zlayer(&["eval", "--pred", "nope", "--gt", gt.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(2));
    assert!(text(&run.stderr).contains("--pred nope: not a folder"));
}

#[test]
fn train_and_generate_end_to_end_smoke() {
    let dir = tmp("train");
    let vae_dir = dir.join("vae");
    let run = zlayer(&[
        "train",
        "vae",
        "--out",
        vae_dir.to_str().unwrap(),
        "--steps",
        "2",
        "--batch",
        "2",
        "--size",
        "32",
        "--heldout",
        "4",
    ]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    assert!(
        text(&run.stderr).contains("held-out PSNR"),
        "{}",
        text(&run.stderr)
    );
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(vae_dir.join("vae.json")).unwrap()).unwrap();
    assert!(meta["latent_scale"].as_f64().unwrap() > 0.0);
    let csv = std::fs::read_to_string(vae_dir.join("vae-loss.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "header and two steps:\n{csv}");

    // DecFormer on that VAE: one step per stage (residual gated off, then on).
    let pelc = dir.join("pelc");
    let run = zlayer(&[
        "train",
        "pelc",
        "--vae",
        vae_dir.join("vae.safetensors").to_str().unwrap(),
        "--out",
        pelc.to_str().unwrap(),
        "--steps",
        "2",
        "--batch",
        "2",
        "--alpha-steps",
        "1",
        "--warmup-s",
        "1",
    ]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    let described: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(pelc.join("pelc.json")).unwrap()).unwrap();
    assert_eq!(described["kind"], "pelc");
    assert!(
        described["parameters"].as_u64().unwrap() > 100_000,
        "{described}"
    );
    assert!(pelc.join("pelc.safetensors").is_file() && pelc.join("pelc-loss.png").is_file());
    let csv = std::fs::read_to_string(pelc.join("pelc-loss.csv")).unwrap();
    let gates: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap())
        .collect();
    assert_eq!(gates, ["0", "1"], "{csv}");
    let scored = dir.join("pelc-eval");
    let run = zlayer(&[
        "eval-pelc",
        "--pelc",
        pelc.join("pelc.safetensors").to_str().unwrap(),
        "--n",
        "4",
        "--out",
        scored.to_str().unwrap(),
        "--oracle-steps",
        "5",
    ]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(scored.join("pelc-eval.json")).unwrap())
            .unwrap();
    let methods: Vec<&str> = report["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, ["linear", "decformer", "pixel", "oracle"]);
    // The oracle starts from the ceiling's latent and descends on the L1 against x*.
    let l1 = |k: usize| report["methods"][k]["l1"].as_f64().unwrap();
    assert!(l1(3) < l1(2), "oracle {} against pixel {}", l1(3), l1(2));
    // Against the VAE's own rendering of the composite, the ceiling is exact by definition.
    let pixel = &report["methods"][2];
    assert_eq!(pixel["bands"]["edge_l1_target"], 0.0, "{pixel}");
    assert_eq!(pixel["by_kind"].as_array().unwrap().len(), 4);
    assert!(report["methods"][0]["bands"]["edge_l1"].as_f64().unwrap() > 0.0);
    assert!(scored.join("pelc-curve.png").is_file());
    assert!(
        text(&run.stdout).contains("| decformer |"),
        "{}",
        text(&run.stdout)
    );

    // Growing the trained DecFormer by a block keeps its config and adds one patch-1 block.
    let grown = dir.join("pelc-grown");
    let run = zlayer(&[
        "train",
        "pelc",
        "--vae",
        vae_dir.join("vae.safetensors").to_str().unwrap(),
        "--init",
        pelc.join("pelc.safetensors").to_str().unwrap(),
        "--add-blocks",
        "1",
        "--out",
        grown.to_str().unwrap(),
        "--steps",
        "1",
        "--batch",
        "2",
    ]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    let bigger: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(grown.join("pelc.json")).unwrap()).unwrap();
    let patches = |v: &serde_json::Value| v["config"]["patches"].as_array().unwrap().clone();
    assert_eq!(
        patches(&bigger)[..patches(&described).len()],
        patches(&described)[..]
    );
    assert_eq!(patches(&bigger).len(), patches(&described).len() + 1);

    // A decoder fine-tune keeps the encoder's latent statistics exactly.
    let tuned = dir.join("tuned");
    let vae_path = vae_dir.join("vae.safetensors");
    let run = zlayer(&[
        "train",
        "vae",
        "--out",
        tuned.to_str().unwrap(),
        "--steps",
        "1",
        "--batch",
        "2",
        "--size",
        "32",
        "--heldout",
        "2",
        "--decoder-of",
        vae_path.to_str().unwrap(),
        "--latent-noise",
        "0.5",
    ]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tuned.join("vae.json")).unwrap()).unwrap();
    for k in ["latent_shift", "latent_scale"] {
        assert_eq!(again[k], meta[k], "{k}");
    }
    assert_eq!(again["latent_noise"].as_f64(), Some(0.5));
    let unanchored = zlayer(&[
        "train",
        "vae",
        "--out",
        dir.join("unanchored").to_str().unwrap(),
        "--latent-noise",
        "0.5",
    ]);
    assert_eq!(unanchored.status.code(), Some(2));
    assert!(
        text(&unanchored.stderr)
            .contains("--latent-noise 0.5 must be 0 or more, and needs --decoder-of"),
        "{}",
        text(&unanchored.stderr)
    );
    let missing = dir.join("nowhere").join("vae.safetensors");
    let bad = zlayer(&[
        "train",
        "vae",
        "--out",
        tuned.to_str().unwrap(),
        "--decoder-of",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad.stderr));
    assert!(
        text(&bad.stderr).contains("no readable"),
        "{}",
        text(&bad.stderr)
    );

    let model = dir.join("model");
    let run = zlayer(&[
        "train",
        "base",
        "--vae",
        vae_dir.join("vae.safetensors").to_str().unwrap(),
        "--out",
        model.to_str().unwrap(),
        "--steps",
        "1",
        "--batch",
        "2",
        "--object-weight",
        "3",
        "--min-visible",
        "40",
    ]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("base.json")).unwrap()).unwrap();
    assert_eq!(meta["min_visible"].as_f64(), Some(40.0));
    let (vae_path, bad_dir) = (vae_dir.join("vae.safetensors"), dir.join("bad"));
    for (flag, says) in [
        (
            "--object-weight=0",
            "--object-weight 0 must be a positive number",
        ),
        (
            "--min-visible=-1",
            "--min-visible -1 must be a pixel count of 0 or more",
        ),
    ] {
        let bad = zlayer(&[
            "train",
            "base",
            "--vae",
            vae_path.to_str().unwrap(),
            "--out",
            bad_dir.to_str().unwrap(),
            flag,
        ]);
        assert_eq!(bad.status.code(), Some(2), "{}", text(&bad.stderr));
        assert!(text(&bad.stderr).contains(says), "{}", text(&bad.stderr));
    }
    std::fs::copy(
        vae_dir.join("vae.safetensors"),
        model.join("vae.safetensors"),
    )
    .unwrap();
    std::fs::copy(vae_dir.join("vae.json"), model.join("vae.json")).unwrap();
    let png = dir.join("gen.png");
    let args = [
        "generate",
        "--prompt",
        "a red sphere on a sky background",
        "-o",
        png.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--steps",
        "2",
        "--n",
        "2",
    ];
    let run = zlayer(&args);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    let img = zlayer_composite::read_png(&png).unwrap();
    assert_eq!(
        (img.width, img.height),
        (64, 32),
        "two 32-px samples side by side"
    );
    let again = dir.join("again.png");
    let mut args2 = args;
    args2[4] = again.to_str().unwrap();
    assert_eq!(zlayer(&args2).status.code(), Some(0));
    assert_eq!(
        std::fs::read(&png).unwrap(),
        std::fs::read(&again).unwrap(),
        "same seed, same bytes"
    );

    // eval-prompts scores held-out prompts against the image, the render and its round trip.
    let scored = dir.join("eval-prompts");
    let run = zlayer(&[
        "eval-prompts",
        "--model",
        model.to_str().unwrap(),
        "--n",
        "4",
        "--batch",
        "3",
        "--steps",
        "2",
        "--out",
        scored.to_str().unwrap(),
    ]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    assert!(text(&run.stdout).contains("after the VAE's round trip"));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(scored.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["prompts"].as_array().unwrap().len(), 4);
    assert_eq!(summary["summary"]["guidance"].as_f64(), Some(1.0));
    let all = &summary["summary"]["groups"][0]["rates"];
    for k in [
        "all_found",
        "all_found_in_render",
        "all_found_in_round_trip",
    ] {
        let v = all[k].as_f64().unwrap();
        assert!(
            (0.0..=1.0).contains(&v) && (v * 4.0).fract() == 0.0,
            "{k} {v}"
        );
    }
    let csv = std::fs::read_to_string(scored.join("per_prompt.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    // The last column names the prompted colours not found, as summary.json has them.
    for (line, p) in csv
        .lines()
        .skip(1)
        .zip(summary["prompts"].as_array().unwrap())
    {
        let missing: Vec<&str> = p["colours"]
            .as_array()
            .unwrap()
            .iter()
            .zip(p["found"].as_array().unwrap())
            .filter(|(_, f)| !f.as_bool().unwrap())
            .map(|(c, _)| c.as_str().unwrap())
            .collect();
        assert_eq!(
            line.rsplit(',').next().unwrap(),
            missing.join(" "),
            "{line}"
        );
    }

    let run = zlayer(&[
        "generate",
        "--prompt",
        "a teal sphere",
        "-o",
        png.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
    ]);
    assert_eq!(run.status.code(), Some(2));
    assert!(
        text(&run.stderr).contains("unknown word \"teal\""),
        "{}",
        text(&run.stderr)
    );
    let run = zlayer(&[
        "generate",
        "--prompt",
        "a red disk",
        "-o",
        png.to_str().unwrap(),
        "--model",
        dir.join("none").to_str().unwrap(),
    ]);
    assert_eq!(run.status.code(), Some(2));
    assert!(
        text(&run.stderr).contains("no such model file"),
        "{}",
        text(&run.stderr)
    );

    // Stage 2: one step of the full method and one of a baseline, on the same base.
    // The first is trained twice: fresh runs start from the same seeded weights.
    let mut layouts = Vec::new();
    for (variant, out) in [
        ("occlusionformer", "layout-occlusionformer"),
        ("global-rank", "layout-global-rank"),
        ("occlusionformer", "layout-again"),
    ] {
        let out = dir.join(out);
        let run = zlayer(&[
            "train",
            "layout",
            "--model",
            model.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--steps",
            "1",
            "--batch",
            "2",
            "--variant",
            variant,
            "--tune-scenes",
            "2",
            "--tune-steps",
            "1",
        ]);
        assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
        // Training ends by choosing the grounding ratio, then the layout guidance at that
        // ratio, then the order guidance, on validation scenes: 3 ratios, 2 layout and 2
        // order guidances besides none.
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("layout.json")).unwrap())
                .unwrap();
        assert_chosen_among_tried(&meta, 7);
        layouts.push(out.join("layout.safetensors"));
    }
    let read = |p: &PathBuf| std::fs::read(p).unwrap();
    assert_eq!(
        read(&layouts[0]),
        read(&layouts[2]),
        "two fresh runs differ"
    );
    let csv = |p: &PathBuf| std::fs::read_to_string(p.with_file_name("layout-loss.csv")).unwrap();
    assert_eq!(csv(&layouts[0]), csv(&layouts[2]));
    for ext in ["safetensors", "json"] {
        std::fs::copy(
            layouts[0].with_extension(ext),
            model.join(format!("layout.{ext}")),
        )
        .unwrap();
    }

    // `zlayer tune` re-tunes a trained branch in place: the candidates it was given, the
    // choice among them recorded, the weights untouched. A folder without a branch is refused.
    let weights_before = std::fs::read(model.join("layout.safetensors")).unwrap();
    let tune = |m: &Path| {
        zlayer(&[
            "tune",
            "--model",
            m.to_str().unwrap(),
            "--work",
            dir.join("tune-work").to_str().unwrap(),
            "--splits",
            "complex",
            "--tune-scenes",
            "1",
            "--tune-steps",
            "1",
            "--tune-ratios",
            "1.0",
            "--tune-guidance",
            "1,2",
            "--tune-order",
            "0",
        ])
    };
    let run = tune(&model);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("layout.json")).unwrap()).unwrap();
    assert_chosen_among_tried(&meta, 2);
    assert_eq!(meta["grounding_ratio"], 1.0, "{meta}");
    assert_eq!(
        std::fs::read(model.join("layout.safetensors")).unwrap(),
        weights_before
    );
    let run = tune(&dir.join("no-such-model"));
    assert_eq!(run.status.code(), Some(2));
    assert!(
        text(&run.stderr).contains("no trained occlusionformer branch"),
        "{}",
        text(&run.stderr)
    );

    // GRPO on that branch: two fresh runs give the same bytes; held-out rows before and
    // after each iteration; a branch every command loads, with its GRPO settings.
    let grpo = |out: &str, group: &str| {
        zlayer(&[
            "train",
            "grpo",
            "--model",
            model.to_str().unwrap(),
            "--out",
            dir.join(out).to_str().unwrap(),
            "--iterations",
            "2",
            "--scenes",
            "1",
            "--group",
            group,
            "--minibatches",
            "2",
            "--steps",
            "2",
            "--sde-steps",
            "1",
            "--sde-span",
            "1",
            "--eval-every",
            "1",
            "--eval-scenes",
            "1",
            "--eval-steps",
            "1",
        ])
    };
    for out in ["grpo-a", "grpo-b"] {
        let run = grpo(out, "2");
        assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
        assert!(
            text(&run.stderr).contains("per iteration rollout"),
            "{}",
            text(&run.stderr)
        );
    }
    let (ga, gb) = (dir.join("grpo-a"), dir.join("grpo-b"));
    for f in ["layout.safetensors", "grpo-loss.csv"] {
        assert_eq!(
            read(&ga.join(f)),
            read(&gb.join(f)),
            "{f} differs between fresh runs"
        );
    }
    let held = std::fs::read_to_string(ga.join("heldout.csv")).unwrap();
    let its: Vec<&str> = held.lines().map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(its, ["iteration", "0", "1", "2"], "{held}");
    assert!(ga.join("heldout.png").is_file() && ga.join("grpo-reward.png").is_file());
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ga.join("layout.json")).unwrap()).unwrap();
    assert_eq!(meta["grpo"]["config"]["iterations"], 2, "{meta}");
    assert_eq!(meta["rank"], 4, "the start's shape is kept: {meta}");
    let run = grpo("grpo-c", "1");
    assert_eq!(run.status.code(), Some(2));
    assert!(
        text(&run.stderr).contains("--group at least 2"),
        "{}",
        text(&run.stderr)
    );
    let (maps, ora, psd) = (
        dir.join("maps"),
        dir.join("scene.ora"),
        dir.join("scene.psd"),
    );
    let run = zlayer(&[
        "generate",
        "examples/sphere-cube.json",
        "-o",
        png.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--steps",
        "2",
        "--maps",
        maps.to_str().unwrap(),
        "--layer-model",
        "none",
        "--ora",
        ora.to_str().unwrap(),
        "--psd",
        psd.to_str().unwrap(),
    ]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    // Everything lies on the scene's 512×512 canvas, and the upscaling is announced.
    assert!(
        text(&run.stderr)
            .contains("the model draws 32×32 px; upscaled to the scene's 512×512 canvas"),
        "{}",
        text(&run.stderr)
    );
    let map_sizes = || -> Vec<(usize, usize)> {
        (0..2)
            .flat_map(|k| ["mask", "weight"].map(|n| maps.join(format!("{n}-{k}.png"))))
            .map(|p| zlayer_composite::read_png(&p).unwrap())
            .map(|img| (img.width, img.height))
            .collect()
    };
    assert_eq!(map_sizes(), [(512, 512); 4]);
    let img = zlayer_composite::read_png(&png).unwrap();
    assert_eq!((img.width, img.height), (512, 512));
    let stack = zlayer_composite::ora::read_ora(&ora).unwrap();
    assert_eq!((stack.width, stack.height), (512, 512));
    assert!(
        stack
            .layers
            .iter()
            .all(|l| l.image.width == 512 && l.image.height == 512)
    );
    let names: Vec<&str> = stack.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "generated image",
            "1: blue cube",
            "0: red sphere",
            "1: blue cube (predicted amodal mask)",
            "0: red sphere (predicted amodal mask)"
        ],
        "bottom first: the cube behind the sphere"
    );
    assert!(!stack.layers[4].visible, "masks are hidden");
    let layered = zlayer_composite::psd::read_psd(&psd).unwrap();
    let psd_names: Vec<&str> = layered.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(psd_names, names, "the PSD holds the ORA's layers");
    assert_eq!((layered.width, layered.height), (512, 512));
    assert!(!layered.layers[4].visible);
    let native = zlayer(&[
        "generate",
        "examples/sphere-cube.json",
        "-o",
        png.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--steps",
        "2",
        "--maps",
        maps.to_str().unwrap(),
        "--native",
    ]);
    assert_eq!(native.status.code(), Some(0), "{}", text(&native.stderr));
    assert!(!text(&native.stderr).contains("upscaled"));
    assert_eq!(map_sizes(), [(32, 32); 4]);
    let img = zlayer_composite::read_png(&png).unwrap();
    assert_eq!((img.width, img.height), (32, 32));

    // The training-free baseline needs no weights; a baseline without instance layers has
    // none to write, and says so before generating anything.
    let base_args = [
        "generate",
        "examples/sphere-cube.json",
        "-o",
        png.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--steps",
        "2",
    ];
    let run = zlayer(&[&base_args[..], &["--variant", "larender"]].concat());
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    let run = zlayer(
        &[
            &base_args[..],
            &[
                "--variant",
                "larender",
                "--ora",
                "x.ora",
                "--layer-model",
                "none",
            ],
        ]
        .concat(),
    );
    assert_eq!(run.status.code(), Some(2));
    assert!(
        text(&run.stderr).contains("the larender variant has none"),
        "{}",
        text(&run.stderr)
    );
    // Layout guidance 0 takes the base's velocity on every step: the base's image, bit for
    // bit. Guidance needs a branch to steer, and a number ≥ 0.
    let read = || std::fs::read(&png).unwrap();
    let run = zlayer(&[&base_args[..], &["--variant", "base"]].concat());
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    let base_png = read();
    let run = zlayer(
        &[
            &base_args[..],
            &[
                "--grounding-ratio",
                "1",
                "--layout-guidance",
                "0",
                "--order-guidance",
                "0",
            ],
        ]
        .concat(),
    );
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    assert_eq!(read(), base_png, "λ = 0 is the base");
    for (extra, err) in [
        (
            &["--variant", "larender", "--order-guidance", "1"][..],
            "larender has none",
        ),
        (&["--layout-guidance=-1"][..], "a number ≥ 0"),
        (&["--guided-ratio", "0"][..], "a share of the steps"),
    ] {
        let run = zlayer(&[&base_args[..], extra].concat());
        assert_eq!(run.status.code(), Some(2), "{}", text(&run.stderr));
        assert!(text(&run.stderr).contains(err), "{}", text(&run.stderr));
    }
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        r#"{"width": 64, "height": 64, "prompt": "a red sphere", "instances": [{"id": "u", "caption": "teal unicorn", "bbox": [4, 4, 40, 40]}]}"#,
    )
    .unwrap();
    let mut args = base_args;
    args[1] = bad.to_str().unwrap();
    // By default the words the tiny model knows are drawn ("teal" is its cyan), and the
    // substitution is said, one line for the instance.
    let run = zlayer(&args);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    let err = text(&run.stderr);
    assert!(
        err.contains("instance \"u\": \"teal unicorn\" drawn as \"cyan disk\" (kept \"teal\"; the tiny model knows 11 colours and 10 shapes; --model flux-dev for open vocabulary, --strict to refuse)"),
        "{err}"
    );
    // --strict keeps the refusal.
    let run = zlayer(&[&args[..], &["--strict"]].concat());
    assert_eq!(run.status.code(), Some(2));
    let err = text(&run.stderr);
    assert!(
        err.contains("instance \"u\": unknown word \"teal\"") && err.contains("knows:"),
        "{err}"
    );
    assert!(
        !err.contains("backtrace") && err.lines().count() <= 2,
        "{err}"
    );
    let run = zlayer(&[&base_args[..], &["--variant", "global"]].concat());
    assert_eq!(run.status.code(), Some(2));
    assert!(
        text(&run.stderr).contains("no trained `global` branch"),
        "{}",
        text(&run.stderr)
    );

    let out = dir.join("eval-layout");
    let list = format!("{},{}", layouts[0].display(), layouts[1].display());
    let run = zlayer(&[
        "eval-layout",
        "--layout",
        &list,
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--n",
        "3",
        "--batch",
        "2",
        "--steps",
        "2",
        "--larender",
    ]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    for row in [
        "| ground truth |",
        "| base (no branch) |",
        "| occlusionformer |",
        "| global-rank |",
    ] {
        assert!(md.contains(row), "{row} missing:\n{md}");
    }
    for k in 0..3 {
        assert!(out.join(format!("global-rank/{k:06}.png")).is_file());
    }
    assert!(out.join("grid.png").is_file());

    // The paper suite on the same models: a baseline under variants/, an untrained ablation.
    let rank_dir = model.join("variants/global-rank");
    std::fs::create_dir_all(&rank_dir).unwrap();
    for ext in ["safetensors", "json"] {
        std::fs::copy(
            layouts[1].with_extension(ext),
            rank_dir.join(format!("layout.{ext}")),
        )
        .unwrap();
    }
    let (work, report) = (dir.join("suite"), dir.join("report"));
    let suite = [
        "eval",
        "--suite",
        "paper",
        "--model",
        model.to_str().unwrap(),
        "--out",
        work.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
        "--n",
        "3",
        "--batch",
        "2",
        "--steps",
        "2",
        "--splits",
        "simple,complex",
        "--methods",
        "base,global-rank,occlusionformer,static-sigma",
    ];
    let run = zlayer(&suite);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    let md = std::fs::read_to_string(report.join("results.md")).unwrap();
    assert!(
        md.contains(&format!("Model: `{}`.", model.display())),
        "the model is not named:\n{md}"
    );
    for want in [
        "| static-sigma | one learned density vector for every instance and time | **not trained** |",
        "## Order flip (complex split)",
        "| occlusionformer | 1 × 2 complex scenes, 0 min |",
        "simple O-mIoU | simple Occ. F1 | complex O-mIoU",
        "![complex grid](results-grid-complex.png)",
    ] {
        assert!(md.contains(want), "{want:?} missing:\n{md}");
    }
    for png in [
        "results-grid-simple.png",
        "results-grid-complex.png",
        "results-flip.png",
    ] {
        zlayer_composite::read_png(&report.join(png)).unwrap();
    }
    // Everything is generated already: a second run only rescores, to the same report.
    let run = zlayer(&suite);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    assert!(text(&run.stderr).contains("all 3 scenes already generated"));
    assert!(
        !text(&run.stderr).contains("generating"),
        "{}",
        text(&run.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(report.join("results.md")).unwrap(),
        md
    );
    // A score-only run generates nothing and marks what an interrupted run left half done.
    let prog = work.join("simple/base/progress.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&prog).unwrap()).unwrap();
    v["done"] = 2.into();
    std::fs::write(&prog, v.to_string()).unwrap();
    let run = zlayer(&[&suite[..], &["--score-only"]].concat());
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    assert!(
        !text(&run.stderr).contains("generating"),
        "{}",
        text(&run.stderr)
    );
    let md = std::fs::read_to_string(report.join("results.md")).unwrap();
    assert!(md.contains("| base | **2 of 3 generated** |"), "{md}");
    // Two "seeds" of the suite's scores, the second with one method missing: the seeds
    // summary counts each method's seeds and sets every method beside occlusionformer.
    let twin = dir.join("suite-twin");
    for split in ["simple", "complex"] {
        for m in ["realrenders", "global-rank", "occlusionformer"] {
            let from = work.join(format!("{split}/eval/{m}/per_scene.csv"));
            let to = twin.join(format!("{split}/eval/{m}"));
            std::fs::create_dir_all(&to).unwrap();
            std::fs::copy(&from, to.join("per_scene.csv")).unwrap();
        }
    }
    let runs = format!("{},{}", work.display(), twin.display());
    let seeds_out = dir.join("seeds");
    let run = zlayer(&[
        "eval",
        "--suite",
        "seeds",
        "--runs",
        &runs,
        "--out",
        seeds_out.to_str().unwrap(),
    ]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    let md = std::fs::read_to_string(seeds_out.join("results-seeds.md")).unwrap();
    assert_eq!(text(&run.stdout), md);
    for want in [
        "## simple (3 scenes)",
        "## complex (3 scenes)",
        "| real renders (ceiling) | 2 |",
        "| base | 1 |",
        "| occlusionformer | 2 |",
        "Δ Occ. F1 (95% interval)",
    ] {
        assert!(md.contains(want), "{want:?} missing:\n{md}");
    }
    // Identical seeds: no spread, and global-rank's difference is the same on both.
    let line = md
        .lines()
        .find(|l| l.starts_with("| global-rank | 2 |"))
        .unwrap_or_else(|| panic!("no global-rank row:\n{md}"));
    assert!(line.contains(" ± 0.000 |"), "{line}");
    let run = zlayer(&[
        "eval",
        "--suite",
        "seeds",
        "--runs",
        &runs[..runs.find(',').unwrap()],
    ]);
    assert_eq!(run.status.code(), Some(2), "{}", text(&run.stderr));
    assert!(
        text(&run.stderr).contains("two or more `eval --suite paper` output folders"),
        "{}",
        text(&run.stderr)
    );
    for (flag, value, err) in [
        ("--methods", "base,unicorn", "unknown method \"unicorn\""),
        (
            "--flip",
            "global",
            "--flip global: also list it in --methods",
        ),
    ] {
        let mut args = suite.to_vec();
        let k = args.iter().position(|&a| a == "--methods").unwrap();
        if flag == "--methods" {
            args[k + 1] = value;
        } else {
            args.extend([flag, value]);
        }
        let run = zlayer(&args);
        assert_eq!(run.status.code(), Some(2), "{}", text(&run.stderr));
        assert!(text(&run.stderr).contains(err), "{}", text(&run.stderr));
    }
}

#[test]
fn a_scene_prompt_outside_the_vocabulary_is_rebuilt_from_its_captions() {
    let dir = tmp("reword");
    let png = dir.join("still-life.png");
    let run = zlayer(&[
        "generate",
        "examples/larender-still-life.json",
        "-o",
        png.to_str().unwrap(),
        "--steps",
        "1",
    ]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    let err = text(&run.stderr);
    assert!(
        err.contains("word \"still\" is not in the tiny model's vocabulary")
            && err.contains(
                "prompting with \"a green stick, a red glass sphere and a blue cube on a checker background\""
            ),
        "{err}"
    );
    assert!(err.contains("peak memory"), "{err}");
    assert!(zlayer_composite::read_png(&png).is_ok());
    // A prompt the user gives is theirs: unknown words stay an error.
    let run = zlayer(&[
        "generate",
        "examples/larender-still-life.json",
        "-o",
        png.to_str().unwrap(),
        "--prompt",
        "a still life",
    ]);
    assert_eq!(run.status.code(), Some(2), "{}", text(&run.stderr));
    assert!(text(&run.stderr).contains("unknown word \"still\""));
}

#[test]
fn every_official_layout_and_example_generates_on_the_bundled_model() {
    let dir = tmp("all-layouts");
    let png = dir.join("out.png");
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter(|p| p.file_name().unwrap() != "cycle-rejected.json")
        .collect();
    let official = zlayer_testkit::fixtures("occlusionformer-examples");
    let mut n_official = 0;
    if let Some(off) = &official {
        for e in std::fs::read_dir(off).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|e| e == "json") {
                files.push(p);
                n_official += 1;
            }
        }
        assert_eq!(n_official, 25, "the authors published 25 layouts");
    }
    files.sort();
    for path in &files {
        let run = zlayer(&[
            "generate",
            path.to_str().unwrap(),
            "-o",
            png.to_str().unwrap(),
            "--steps",
            "1",
            "--native",
        ]);
        let err = text(&run.stderr);
        assert_eq!(run.status.code(), Some(0), "{}: {err}", path.display());
        // The authors' captions are free text ("a young girl standing gracefully"): each one
        // is announced with what the tiny model draws instead.
        if official.as_ref().is_some_and(|o| path.starts_with(o)) {
            assert!(err.contains("\" drawn as \""), "{}: {err}", path.display());
        }
        let img = zlayer_composite::read_png(&png).unwrap();
        assert_eq!((img.width, img.height), (64, 64), "{}", path.display());
    }
    // At canvas size by default: the authors' layouts are 1024² (GIMP opens the layers on
    // the layout's own pixels).
    if let Some(off) = &official {
        let run = zlayer(&[
            "generate",
            off.join("dog-cat_1.json").to_str().unwrap(),
            "-o",
            png.to_str().unwrap(),
            "--steps",
            "1",
        ]);
        assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
        let img = zlayer_composite::read_png(&png).unwrap();
        assert_eq!((img.width, img.height), (1024, 1024));
    }
}

#[test]
fn the_bundled_model_works_outside_the_repository() {
    // A copied or installed binary, run from anywhere: the default model is built in.
    let dir = tmp("elsewhere");
    let scene = repo().join("examples/sphere-cube.json");
    let from_here = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_zlayer"))
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("runs")
    };
    let run = from_here(&[
        "generate",
        scene.to_str().unwrap(),
        "-o",
        "out.png",
        "--steps",
        "2",
        "--native",
    ]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    let built_in = std::fs::read(dir.join("out.png")).unwrap();
    // The same bytes as the folder it was built from.
    let run = from_here(&[
        "generate",
        scene.to_str().unwrap(),
        "-o",
        "folder.png",
        "--steps",
        "2",
        "--native",
        "--model",
        repo().join("models/tiny16").to_str().unwrap(),
    ]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    assert_eq!(built_in, std::fs::read(dir.join("folder.png")).unwrap());
    // The same binary serves the editor from there.
    let (mut server, addr, _) = common::serve(&dir, &[]);
    let page = common::request(&addr, "GET", "/", "");
    server.kill().ok();
    server.wait().ok();
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("<title>zlayer editor</title>"));
    // A folder that is not a model still says what is missing and how to fix it.
    let run = from_here(&[
        "generate",
        "--prompt",
        "a red disk",
        "-o",
        "x.png",
        "--model",
        "nowhere",
    ]);
    assert_eq!(run.status.code(), Some(2));
    let err = text(&run.stderr);
    assert!(
        err.contains("nowhere/vae.safetensors: no such model file")
            && err.contains("leave --model out"),
        "{err}"
    );
}

#[test]
fn bench_train_times_the_step_and_says_why_the_peer_is_missing() {
    let run = zlayer(&[
        "bench-train",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--peer",
        "/nonexistent/peer.py",
    ]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    let out = text(&run.stdout);
    assert!(out.contains("| zlayer (candle) |"), "{out}");
    assert!(
        out.contains("left out: no peer script at /nonexistent/peer.py"),
        "{out}"
    );
    let run = zlayer(&["bench-train", "--steps", "0"]);
    assert_eq!(run.status.code(), Some(2));
    assert!(text(&run.stderr).contains("--steps must be positive"));
}

/// A branch's layout.json records `n` tuning candidates and a choice that is one of them.
fn assert_chosen_among_tried(meta: &serde_json::Value, n: usize) {
    let tried = meta["grounding_tuning"]["scores"]
        .as_array()
        .expect("scores");
    assert_eq!(tried.len(), n, "{meta}");
    let chosen = |s: &serde_json::Value| {
        s["ratio"] == meta["grounding_ratio"]
            && s["guidance"] == meta["layout_guidance"]
            && s["order"] == meta["order_guidance"]
            && s["guided"] == meta["guided_ratio"]
    };
    assert!(tried.iter().any(chosen), "{meta}");
}
