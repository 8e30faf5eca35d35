//! PNG and OpenRaster files, and layer-stack composition.

use std::io::Read;
use zlayer_composite::io::{BitDepth, decode_png, encode_png};
use zlayer_composite::ora::{decode_ora, encode_ora, write_ora};
use zlayer_composite::{Image, Layer, LayerStack, Premul, Straight, read_png, write_png};

fn gradient(w: usize, h: usize, seed: u32) -> Image<Straight> {
    let mut img = Image::new(w, h);
    for (i, p) in img.pixels.iter_mut().enumerate() {
        let v = |k: u32| {
            ((i as u32)
                .wrapping_mul(2654435761)
                .wrapping_add(seed * 97 + k * 31)
                % 256) as f32
                / 255.0
        };
        *p = Straight([v(0), v(1), v(2), v(3)]);
    }
    img
}

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("zlayer-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn png_8_bit_round_trip_is_exact() {
    let img = gradient(13, 7, 1);
    let back = decode_png(&encode_png(&img, BitDepth::Eight).unwrap()).unwrap();
    assert_eq!(back, img);
}

#[test]
fn png_16_bit_round_trip_is_exact_for_16_bit_values() {
    let mut img = Image::<Straight>::new(300, 2);
    for (i, p) in img.pixels.iter_mut().enumerate() {
        let v = |k: usize| ((i * 219 + k * 4099) % 65536) as f32 / 65535.0;
        *p = Straight([v(0), v(1), v(2), v(3)]);
    }
    let bytes = encode_png(&img, BitDepth::Sixteen).unwrap();
    assert_eq!(&bytes[24..26], &[16, 6], "IHDR says 16-bit RGBA");
    assert_eq!(decode_png(&bytes).unwrap(), img);
}

#[test]
fn grey_and_rgb_pngs_decode_as_opaque_rgba() {
    let mut buf = Vec::new();
    {
        let mut e = png::Encoder::new(&mut buf, 2, 1);
        e.set_color(png::ColorType::Grayscale);
        e.set_depth(png::BitDepth::Eight);
        e.write_header()
            .unwrap()
            .write_image_data(&[0, 255])
            .unwrap();
    }
    let img = decode_png(&buf).unwrap();
    assert_eq!(
        img.pixels,
        vec![Straight([0.0, 0.0, 0.0, 1.0]), Straight([1.0; 4])]
    );
    assert!(decode_png(b"not a png").is_err());
}

#[test]
fn png_files_are_written_atomically() {
    let dir = tmpdir("png");
    let path = dir.join("a.png");
    write_png(&path, &gradient(4, 4, 2), BitDepth::Eight).unwrap();
    assert_eq!(read_png(&path).unwrap(), gradient(4, 4, 2));
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["a.png"], "no temporary file is left behind");
    let err = write_png(
        &dir.join("missing/b.png"),
        &gradient(1, 1, 0),
        BitDepth::Eight,
    )
    .unwrap_err();
    assert!(err.to_string().contains("missing/b.png"), "{err}");
}

#[test]
fn stack_composite_matches_a_naive_fold() {
    let layers: Vec<Layer> = (0..4)
        .map(|k| Layer::new(format!("l{k}"), gradient(9, 5, k)))
        .collect();
    let stack = LayerStack::from_layers(layers.clone());
    let got = stack.composite();
    for p in 0..45 {
        let mut acc = [0.0f32; 4];
        for l in &layers {
            let [r, g, b, a] = l.image.pixels[p].0;
            acc = [
                r * a + acc[0] * (1.0 - a),
                g * a + acc[1] * (1.0 - a),
                b * a + acc[2] * (1.0 - a),
                a + acc[3] * (1.0 - a),
            ];
        }
        for (g, w) in got.pixels[p].0.iter().zip(acc) {
            assert!((g - w).abs() < 1e-6);
        }
    }
}

#[test]
fn offsets_opacity_and_visibility() {
    let red = Image {
        width: 2,
        height: 2,
        pixels: vec![Straight([1.0, 0.0, 0.0, 1.0]); 4],
    };
    let mut top = Layer::new("top", red.clone());
    top.x = 3;
    top.y = -1;
    top.opacity = 0.5;
    let mut hidden = Layer::new("hidden", red);
    hidden.visible = false;
    let stack = LayerStack {
        width: 4,
        height: 2,
        layers: vec![hidden, top],
        metadata: None,
    };
    let out = stack.composite();
    // Only pixel (3, 0) is covered: the layer is shifted right by 3 and up by 1.
    for (i, p) in out.pixels.iter().enumerate() {
        let want = if i == 3 {
            Premul([0.5, 0.0, 0.0, 0.5])
        } else {
            Premul::default()
        };
        assert_eq!(*p, want, "pixel {i}");
    }
}

fn demo_stack() -> LayerStack {
    let mut layers: Vec<Layer> = (0..3)
        .map(|k| Layer::new(format!("layer <{k}> & co"), gradient(300, 200, k)))
        .collect();
    layers[1].opacity = 0.25;
    layers[2].visible = false;
    layers[2].x = 10;
    LayerStack {
        width: 300,
        height: 200,
        layers,
        metadata: None,
    }
}

#[test]
fn ora_layout_is_what_gimp_and_krita_expect() {
    let bytes = encode_ora(&demo_stack(), BitDepth::Eight).unwrap();
    // The mimetype must be the first entry, stored, with no extra field, so its content
    // sits at a fixed offset that file sniffers read.
    assert_eq!(&bytes[0..4], b"PK\x03\x04");
    assert_eq!(
        u16::from_le_bytes([bytes[8], bytes[9]]),
        0,
        "mimetype is stored, not deflated"
    );
    assert_eq!(&bytes[30..38], b"mimetype");
    assert_eq!(
        u16::from_le_bytes([bytes[28], bytes[29]]),
        0,
        "no extra field"
    );
    assert_eq!(&bytes[38..54], b"image/openraster");

    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&bytes)).unwrap();
    let names: Vec<String> = (0..zip.len())
        .map(|i| zip.by_index(i).unwrap().name().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "mimetype",
            "stack.xml",
            "data/layer000.png",
            "data/layer001.png",
            "data/layer002.png",
            "mergedimage.png",
            "Thumbnails/thumbnail.png"
        ]
    );
    assert_eq!(
        zip.by_index(0).unwrap().compression(),
        zip::CompressionMethod::Stored
    );

    let mut xml = String::new();
    zip.by_name("stack.xml")
        .unwrap()
        .read_to_string(&mut xml)
        .unwrap();
    let top = xml.find("data/layer002.png").unwrap();
    let bottom = xml.find("data/layer000.png").unwrap();
    assert!(top < bottom, "top of the stack comes first:\n{xml}");
    assert!(xml.contains("name=\"layer &lt;1&gt; &amp; co\""), "{xml}");
    assert!(xml.contains("visibility=\"hidden\""));

    let mut thumb = Vec::new();
    zip.by_name("Thumbnails/thumbnail.png")
        .unwrap()
        .read_to_end(&mut thumb)
        .unwrap();
    let t = decode_png(&thumb).unwrap();
    assert_eq!((t.width, t.height), (256, 171));
    let mut merged = Vec::new();
    zip.by_name("mergedimage.png")
        .unwrap()
        .read_to_end(&mut merged)
        .unwrap();
    assert_eq!(decode_png(&merged).unwrap().width, 300);
}

#[test]
fn ora_round_trips() {
    let stack = demo_stack();
    let dir = tmpdir("ora");
    let path = dir.join("s.ora");
    write_ora(&path, &stack, BitDepth::Eight).unwrap();
    let back = zlayer_composite::ora::read_ora(&path).unwrap();
    assert_eq!(back, stack);
    assert!(decode_ora(b"PK nonsense").is_err());
}

/// Metadata with every character XML and JSON escape, and some that are not ASCII.
const METADATA: &str = r#"{"scene": {"prompt": "a <red> & "blue" 猫 's"}, "seed": 7}"#;

#[test]
fn metadata_round_trips_through_ora_and_psd() {
    let mut stack = demo_stack();
    stack.metadata = Some(METADATA.into());
    let dir = tmpdir("meta");
    let (ora, psd) = (dir.join("m.ora"), dir.join("m.psd"));
    write_ora(&ora, &stack, BitDepth::Eight).unwrap();
    let back = zlayer_composite::ora::read_ora(&ora).unwrap();
    assert_eq!(back.metadata.as_deref(), Some(METADATA));
    // The entry is a plain zip member, and <image> names it.
    let bytes = std::fs::read(&ora).unwrap();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut xml = String::new();
    std::io::Read::read_to_string(&mut zip.by_name("stack.xml").unwrap(), &mut xml).unwrap();
    assert!(xml.contains("zlayer:metadata=\"zlayer.json\""), "{xml}");
    assert!(zip.by_name("zlayer.json").is_ok());
    zlayer_composite::psd::write_psd(&psd, &stack).unwrap();
    let back = zlayer_composite::psd::read_psd(&psd).unwrap();
    assert_eq!(back.metadata.as_deref(), Some(METADATA));
    assert_eq!(back.layers.len(), stack.layers.len());
    // Without metadata, none comes back.
    stack.metadata = None;
    zlayer_composite::psd::write_psd(&psd, &stack).unwrap();
    assert_eq!(
        zlayer_composite::psd::read_psd(&psd).unwrap().metadata,
        None
    );
}
