//! The OcclusionFormer authors' own layout files: every one imports, validates and
//! round-trips losslessly through both the official format and the native one.

use serde_json::Value;
use zlayer_scene::{Format, export, import_str, load_str};

fn fixture_files() -> Vec<(String, String)> {
    let Some(dir) = zlayer_testkit::fixtures("occlusionformer-examples") else {
        return Vec::new();
    };
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 25,
        "expected the 25 authors' files, found {}",
        files.len()
    );
    files
        .into_iter()
        .map(|p| {
            (
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect()
}

#[test]
fn every_fixture_imports_and_validates_without_warnings() {
    for (name, text) in fixture_files() {
        let loaded = load_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(loaded.format, Format::OcclusionFormer, "{name}");
        assert!(loaded.warnings.is_empty(), "{name}: {:?}", loaded.warnings);
        let v: Value = serde_json::from_str(&text).unwrap();
        let scene = loaded.scene.scene();
        assert_eq!(scene.instances.len(), v["annos"].as_array().unwrap().len());
        // The declared order survives into the graph: i occludes j ⇔ i ∈ O_j.
        for (i, a) in v["annos"].as_array().unwrap().iter().enumerate() {
            for k in a["occludes"]
                .as_str()
                .unwrap()
                .split(',')
                .filter(|s| !s.is_empty())
            {
                let j: usize = k.trim().parse::<usize>().unwrap() - 1;
                assert!(
                    loaded.scene.graph().occluders(j).contains(&i),
                    "{name}: {i} over {j}"
                );
            }
        }
    }
}

#[test]
fn every_fixture_round_trips_through_the_official_format() {
    for (name, text) in fixture_files() {
        let imported = import_str(&text).unwrap();
        let out = export(&imported.scene, Format::OcclusionFormer).unwrap();
        let a: Value = serde_json::from_str(&text).unwrap();
        let b: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(a, b, "{name}");
    }
}

#[test]
fn every_fixture_round_trips_through_the_native_format() {
    for (name, text) in fixture_files() {
        let scene = import_str(&text).unwrap().scene;
        let native = export(&scene, Format::Native).unwrap();
        let back = import_str(&native).unwrap();
        assert_eq!(back.format, Format::Native);
        assert_eq!(back.scene, scene, "{name}");
        let official = export(&back.scene, Format::OcclusionFormer).unwrap();
        let a: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            a,
            serde_json::from_str::<Value>(&official).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn parity_scene_tokens_match_the_official_index_lists() {
    let Some(dir) = zlayer_testkit::fixtures("official-parity") else {
        return;
    };
    let scene = load_str(&std::fs::read_to_string(dir.join("scene.json")).unwrap()).unwrap();
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    let [gh, gw] = [0, 1].map(|k| meta["token_grid"][k].as_u64().unwrap() as usize);
    let grid = zlayer_scene::TokenGrid::new(gw, gh);
    let s = scene.scene.scene();
    for (i, inst) in s.instances.iter().enumerate() {
        let expected: Vec<usize> = meta["token_index_lists"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(
            grid.box_tokens(inst.bbox, s.width, s.height),
            expected,
            "instance {i}"
        );
        let occ: Vec<usize> = meta["occluder_sets_0_based"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(scene.scene.graph().occluders(i), &occ[..], "O_{i}");
    }
}

#[test]
fn json_schema_lists_exactly_the_native_fields() {
    let schema: Value =
        serde_json::from_str(include_str!("../../../docs/scene.schema.json")).unwrap();
    let full = r#"{"width": 8, "height": 8, "seed": 1, "prompt": "p", "caption": "c",
        "instances": [{"id": "a", "caption": "x", "category": "k", "bbox": [0,0,4,4],
                       "mask": [[0,0,4,0,4,4]], "occludes": ["b"], "opacity": 0.5},
                      {"id": "b", "caption": "y", "bbox": [1,1,5,5]}]}"#;
    let scene = import_str(full).unwrap().scene;
    let v: Value = serde_json::from_str(&export(&scene, Format::Native).unwrap()).unwrap();
    let keys = |o: &Value| -> Vec<String> {
        let mut k: Vec<String> = o.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&schema["properties"]), keys(&v));
    assert_eq!(
        keys(&schema["$defs"]["instance"]["properties"]),
        keys(&v["instances"][0])
    );
}
