//! Any bytes through the whole scene pipeline: import (format detection, every importer),
//! validation, the Z-order graph, and both exporters. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zlayer_scene::{Format, TokenGrid, export, load_str};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(loaded) = load_str(&text) {
        let scene = loaded.scene.scene();
        let _ = loaded.scene.graph().draw_order();
        let grid = TokenGrid::new(8, 8);
        for inst in &scene.instances {
            let _ = grid.box_tokens(inst.bbox, scene.width, scene.height);
            let _ = grid.soft_box_mask(inst.bbox, scene.width, scene.height);
        }
        for f in [Format::Native, Format::OcclusionFormer] {
            let out = export(scene, f).expect("a valid scene exports");
            load_str(&out).expect("an exported scene loads again");
        }
    }
});
