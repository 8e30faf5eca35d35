//! zlayer's PSD files in independent readers: the `psd-tools` Python package (layer names,
//! order, offsets, opacity, visibility, pixels) and GIMP's own PSD loader in batch mode
//! (the layer count). Each reader that is missing skips with a notice, and fails under
//! CI=true (`.ci/run` installs both).

use std::path::{Path, PathBuf};
use std::process::Command;
use zlayer_composite::psd::write_psd;
use zlayer_composite::{Image, Layer, LayerStack, Straight};

fn stack() -> LayerStack {
    let (w, h) = (24, 16);
    let image = |w: usize, h: usize, f: &dyn Fn(usize, usize) -> [f32; 4]| Image {
        width: w,
        height: h,
        pixels: (0..w * h).map(|i| Straight(f(i % w, i / w))).collect(),
    };
    let bg = image(w, h, &|x, y| [x as f32 / 23.0, y as f32 / 15.0, 0.5, 1.0]);
    let mut disk = Layer::new(
        "1: red sphere",
        image(10, 8, &|x, y| {
            let d = ((x as f32 - 4.5).powi(2) + (y as f32 - 3.5).powi(2)).sqrt();
            [0.8, 0.1, 0.15, (4.0 - d).clamp(0.0, 1.0)]
        }),
    );
    (disk.x, disk.y) = (6, 5);
    let mut glass = Layer::new(
        "2: glass cube — 前",
        image(8, 8, &|_, _| [0.2, 0.3, 0.9, 0.4]),
    );
    (glass.x, glass.y, glass.opacity) = (12, 2, 0.75);
    let mut hidden = Layer::new(
        "mask 1 (hidden)",
        image(w, h, &|x, _| [1.0, 1.0, 1.0, (x % 2) as f32]),
    );
    hidden.visible = false;
    LayerStack {
        width: w,
        height: h,
        layers: vec![Layer::new("generated image", bg), disk, glass, hidden],
        metadata: Some(r#"{"scene": {"prompt": "a <red> & \"blue\" 猫"}}"#.into()),
    }
}

fn written() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("psd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("layers.psd");
    write_psd(&path, &stack()).unwrap();
    path
}

/// A Python with psd_tools: `ZLAYER_PYTHON`, else `python3`.
fn python() -> Option<String> {
    let py = std::env::var("ZLAYER_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import psd_tools"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(py)
}

const READ: &str = r#"
import json, sys
from psd_tools import PSDImage
psd = PSDImage.open(sys.argv[1])
out = {"size": [psd.width, psd.height], "layers": []}
for l in psd:
    img = l.topil().convert("RGBA")
    out["layers"].append({
        "name": l.name, "visible": l.visible, "opacity": l.opacity,
        "bbox": list(l.bbox), "pixels": [list(img.getpixel((x, y))) for (x, y) in [(0, 0), (4, 3), (img.width - 1, img.height - 1)]],
    })
from psd_tools.constants import Resource
xmp = psd.image_resources.get_data(Resource.XMP_METADATA)
out["xmp"] = xmp.decode("utf-8") if isinstance(xmp, bytes) else xmp
print(json.dumps(out))
"#;

#[test]
fn psd_tools_reads_every_layer_as_written() {
    let Some(py) = python() else {
        zlayer_testkit::absent(
            "python3 with psd-tools (pip install psd-tools; or set ZLAYER_PYTHON)",
            "psd-tools check",
        );
        return;
    };
    let path = written();
    let out = Command::new(py)
        .args(["-c", READ, path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = stack();
    assert_eq!(v["size"], serde_json::json!([s.width, s.height]));
    // The XMP packet, read by psd-tools, holds the metadata, XML-escaped.
    let xmp = v["xmp"].as_str().expect("an XMP resource");
    let meta = s.metadata.as_deref().unwrap();
    let escaped = meta
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;");
    assert!(
        xmp.contains(&format!("<zlayer:metadata>{escaped}</zlayer:metadata>")),
        "{xmp}"
    );
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), s.layers.len(), "{v}");
    for (l, r) in s.layers.iter().zip(layers) {
        assert_eq!(
            r["name"],
            l.name.as_str(),
            "bottom first, names kept (UTF-8 too)"
        );
        assert_eq!(r["visible"], l.visible, "{}", l.name);
        assert_eq!(
            r["opacity"].as_i64().unwrap(),
            i64::from(zlayer_composite::rgba::quantize8(l.opacity))
        );
        let (x, y) = (l.x, l.y);
        let want = [x, y, x + l.image.width as i64, y + l.image.height as i64];
        assert_eq!(r["bbox"], serde_json::json!(want), "{}", l.name);
        let px = |x: usize, y: usize| {
            let p = l.image.pixels[y * l.image.width + x].0;
            p.map(|c| i64::from(zlayer_composite::rgba::quantize8(c)))
        };
        let (w, h) = (l.image.width, l.image.height);
        for (k, (x, y)) in [(0, 0), (4, 3), (w - 1, h - 1)].into_iter().enumerate() {
            let got: Vec<i64> = r["pixels"][k]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_i64().unwrap())
                .collect();
            let want = px(x, y);
            // Straight alpha: a transparent pixel's colour is not compared.
            if want[3] == 0 {
                assert_eq!(got[3], 0, "{} at ({x}, {y})", l.name);
            } else {
                assert_eq!(got, want, "{} at ({x}, {y})", l.name);
            }
        }
    }
}

#[test]
fn gimp_loads_the_layers() {
    let gimp = "gimp-console";
    if Command::new(gimp).arg("--version").output().is_err() {
        zlayer_testkit::absent("gimp-console (Debian: apt-get install gimp)", "GIMP check");
        return;
    }
    let path = written();
    let script = format!(
        "(let* ((image (car (file-psd-load RUN-NONINTERACTIVE \"{p}\" \"{p}\")))) (gimp-message (string-append \"layers=\" (number->string (car (gimp-image-get-layers image)))))) (gimp-quit 0)",
        p = path.display()
    );
    let out = Command::new(gimp)
        .args([
            "-i",
            "-d",
            "-f",
            "--batch-interpreter=plug-in-script-fu-eval",
            "-b",
            &script,
        ])
        .env("HOME", path.parent().unwrap())
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains(&format!("layers={}", stack().layers.len())),
        "{all}"
    );
}
