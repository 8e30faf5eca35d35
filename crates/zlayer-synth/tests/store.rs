//! Shards and PNG folders round-trip what was rendered.

use zlayer_synth::store::{read_shard, write_png_folder, write_shard};
use zlayer_synth::{Params, Split, scene_at};

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("zlayer-synth-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn shards_round_trip_and_are_byte_identical_on_regeneration() {
    let params = Params::new(Split::Complex, 64);
    let scenes: Vec<_> = (40..60).map(|i| scene_at(9, i, &params)).collect();
    let dir = tmp("shard");
    write_shard(&dir, "shard-00000", &scenes).unwrap();
    let back = read_shard(&dir, "shard-00000", 9, &params).unwrap();
    assert_eq!(back, scenes);
    let first = std::fs::read(dir.join("shard-00000.safetensors")).unwrap();
    let again: Vec<_> = (40..60).map(|i| scene_at(9, i, &params)).collect();
    write_shard(&dir, "shard-00001", &again).unwrap();
    assert_eq!(
        first,
        std::fs::read(dir.join("shard-00001.safetensors")).unwrap()
    );
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
}

#[test]
fn png_folder_holds_every_layer_and_mask() {
    let s = scene_at(1, 3, &Params::new(Split::Regular, 64));
    let dir = tmp("png").join("000003");
    write_png_folder(&dir, &s).unwrap();
    let img = zlayer_composite::read_png(&dir.join("image.png")).unwrap();
    assert_eq!((img.width, img.height), (64, 64));
    for k in 0..s.layers.len() {
        let layer = zlayer_composite::read_png(&dir.join(format!("layer-{k}.png"))).unwrap();
        assert_eq!(
            layer.pixels.iter().map(|p| p.to_u8().0).collect::<Vec<_>>(),
            s.layers[k].iter().map(|p| p.0).collect::<Vec<_>>()
        );
        let m = zlayer_composite::io::read_mask_png(&dir.join(format!("amodal-{k}.png"))).unwrap();
        assert_eq!(
            m.data
                .iter()
                .map(|&v| (v * 255.0).round() as u8)
                .collect::<Vec<_>>(),
            s.amodal[k]
        );
        assert!(dir.join(format!("visible-{k}.png")).exists());
    }
    let scene =
        zlayer_scene::load_str(&std::fs::read_to_string(dir.join("scene.json")).unwrap()).unwrap();
    assert_eq!(scene.scene.scene(), &s.scene);
}
