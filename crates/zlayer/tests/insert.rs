//! `zlayer insert` as a user runs it: a generated scene, an object put behind one of its
//! instances, the files it writes, and the errors it gives.

mod common;

use common::{text, tmp, zlayer};

#[test]
fn insert_behind_keeps_the_image_outside_the_new_object_and_updates_the_scene() {
    let d = tmp("insert");
    let (scene_png, out) = (d.join("scene.png"), d.join("out.png"));
    let (json, ora, psd) = (d.join("out.json"), d.join("out.ora"), d.join("out.psd"));
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let o = zlayer(&[
        "generate",
        "examples/sphere-cube.json",
        "-o",
        &s(&scene_png),
        "--steps",
        "8",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = zlayer(&[
        "insert",
        &s(&scene_png),
        "--scene",
        "examples/sphere-cube.json",
        "--caption",
        "green cone",
        "--box",
        "60,200,240,440",
        "--behind",
        "sphere",
        "--steps",
        "8",
        "-o",
        &s(&out),
        "--scene-out",
        &s(&json),
        "--ora",
        &s(&ora),
        "--psd",
        &s(&psd),
        "--band",
        "10",
    ]);
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("drawn as \"green disk\""),
        "the fitted caption is announced: {err}"
    );
    assert!(err.contains("behind sphere"), "{err}");
    let (a, b) = (
        zlayer_composite::read_png(&scene_png).unwrap(),
        zlayer_composite::read_png(&out).unwrap(),
    );
    assert_eq!((b.width, b.height), (512, 512));
    // Outside the box grown by the band, nothing may change.
    let mut changed_inside = 0;
    for (q, (pa, pb)) in a.pixels.iter().zip(&b.pixels).enumerate() {
        let (x, y) = ((q % 512) as i64, (q / 512) as i64);
        let near = (50..250).contains(&x) && (190..450).contains(&y);
        if !near {
            assert_eq!(pa, pb, "pixel ({x}, {y}) changed");
        } else if pa != pb {
            changed_inside += 1;
        }
    }
    assert!(
        changed_inside > 1000,
        "only {changed_inside} pixels changed"
    );
    let placed = zlayer_app::scene_file::load_quiet(&json).unwrap();
    let sc = placed.scene.scene();
    assert_eq!(sc.instances.len(), 3);
    assert_eq!(
        sc.instances[2].caption, "green cone",
        "the user's caption is kept"
    );
    assert!(sc.instances[0].occludes.contains(&"new".to_string()));
    assert!(sc.instances[2].occludes.contains(&"cube".to_string()));
    let stack = zlayer_composite::psd::read_psd(&psd).unwrap();
    assert_eq!(stack.layers.len(), 4, "the image and three cut-outs");
    assert!(stack.layers.iter().any(|l| l.name == "2: green cone"));
    assert!(std::fs::metadata(&ora).unwrap().len() > 1000);
    // The layers know their scene: recompose reads it back from either file.
    let meta: serde_json::Value = serde_json::from_str(stack.metadata.as_deref().unwrap()).unwrap();
    assert_eq!(meta["made_by"], "insert");
    assert_eq!(meta["scene"]["instances"][2]["id"], "new");
    assert_eq!(meta["layers"].as_array().unwrap().len(), 3);
    let (re, sheet) = (d.join("re.png"), d.join("sheet.png"));
    let o = zlayer(&[
        "recompose",
        &s(&ora),
        "--order",
        "new,sphere,cube",
        "-o",
        &s(&re),
        "--sheet",
        &s(&sheet),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let sh = zlayer_composite::read_png(&sheet).unwrap();
    assert_eq!(
        (sh.width, sh.height),
        (5 * 512, 512),
        "four layers and the composite"
    );
    assert!(
        text(&o.stderr).contains("front first: new, sphere, cube"),
        "{}",
        text(&o.stderr)
    );
    // Moving a cut-out reveals the image beneath it; --harmonise redraws that, and refuses
    // to write layers it would not change.
    let moved = d.join("moved.png");
    let harmonise = |out: &std::path::Path| {
        zlayer(&[
            "recompose",
            &s(&ora),
            "--move",
            "new=40,0",
            "-o",
            &s(out),
            "--harmonise",
            "--steps",
            "4",
        ])
    };
    let o = harmonise(&moved);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("harmonised with bundled (occlusionformer) from flow time 0.3"),
        "{}",
        text(&o.stderr)
    );
    let m = zlayer_composite::read_png(&moved).unwrap();
    assert_eq!((m.width, m.height), (512, 512));
    let o = harmonise(&d.join("moved.ora"));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("write a .png"),
        "{}",
        text(&o.stderr)
    );
    let o = zlayer(&[
        "recompose",
        &s(&psd),
        "--order",
        "new,sphere",
        "-o",
        &s(&re),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("missing: cube"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn insert_names_what_is_wrong() {
    let d = tmp("insert-errors");
    let out = d.join("x.png");
    let out = out.to_str().unwrap();
    let base = [
        "insert",
        "--scene",
        "examples/sphere-cube.json",
        "--caption",
        "red disk",
        "-o",
        out,
        "--steps",
        "2",
    ];
    let run = |extra: &[&str]| {
        let mut args: Vec<&str> = base.to_vec();
        args.extend_from_slice(extra);
        let o = zlayer(&args);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
        text(&o.stderr)
    };
    let e = run(&["--box", "10,10,5,40"]);
    assert!(e.contains("x2 must exceed x1"), "{e}");
    let e = run(&["--box", "10,10,50"]);
    assert!(e.contains("four numbers"), "{e}");
    let e = run(&["--box", "10,10,50,50", "--behind", "tree"]);
    assert!(
        e.contains("no instance \"tree\"") && e.contains("sphere, cube"),
        "{e}"
    );
    // The 8-channel model has no DecFormer, and the bundled one blends 16 channels.
    let e = run(&[
        "--box",
        "10,10,50,50",
        "--latent-blend",
        "pelc",
        "--model",
        "models/tiny",
    ]);
    assert!(e.contains("train pelc"), "{e}");
    let e = run(&[
        "--box",
        "10,10,50,50",
        "--model",
        "models/tiny",
        "--pelc",
        "models/tiny16/pelc.safetensors",
    ]);
    assert!(e.contains("16-channel latents at 4×"), "{e}");
    let e = run(&["--box", "10,10,50,50", "--id", "cube"]);
    assert!(e.contains("already has an instance \"cube\""), "{e}");
    assert!(
        !std::path::Path::new(out).exists(),
        "nothing written on error"
    );
}
