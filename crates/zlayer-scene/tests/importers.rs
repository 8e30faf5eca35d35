//! Each importer on hand-written samples of its documented format.

use zlayer_scene::{BBox, Format, export, import_str, load_str, parse_order_string};

#[test]
fn native_scene_with_mixed_id_types() {
    let l = load_str(
        r#"{"width": 512, "height": 384, "seed": 7, "prompt": "toys",
            "instances": [
              {"id": "sphere", "caption": "red sphere", "bbox": [10, 10, 200, 200], "occludes": ["cube"]},
              {"id": "cube", "caption": "blue cube", "category": "cube", "bbox": [100, 50, 300, 250]},
              {"id": 3, "caption": "green stick", "bbox": [0, 150, 512, 170.5], "occludes": ["sphere", "cube"], "opacity": 0.5}
            ]}"#,
    )
    .unwrap();
    assert_eq!(l.format, Format::Native);
    let s = l.scene.scene();
    assert_eq!((s.width, s.height, s.seed), (512, 384, Some(7)));
    assert_eq!(s.instances[2].id, "3");
    assert_eq!(s.instances[2].bbox, BBox::new(0.0, 150.0, 512.0, 170.5));
    assert_eq!(s.instances[2].opacity, Some(0.5));
    let g = l.scene.graph();
    assert_eq!(g.occluders(1), &[0, 2]);
    assert_eq!(g.depth_levels(), &[1, 2, 0]);
}

#[test]
fn native_rejects_unknown_fields_with_their_path() {
    let e = import_str(
        r#"{"width": 64, "height": 64, "instances": [{"id": "a", "caption": "x", "bbox": [0,0,4,4], "occluded": []}]}"#,
    )
    .unwrap_err();
    let d = &e.diagnostics[0];
    assert_eq!(d.path, "instances[0].occluded");
    assert!(
        d.message.contains("unknown field `occluded`"),
        "{}",
        d.message
    );
    assert!(
        d.message.contains("occludes"),
        "lists the expected fields: {}",
        d.message
    );
}

#[test]
fn occlusionformer_reads_one_based_string_indices() {
    let text = r#"{"prompt": "p", "caption": "p", "height": 100, "width": 200, "seed": 3,
        "annos": [
          {"bbox": [0, 0, 50, 50], "caption": "cat", "category_name": "cat", "occludes": ""},
          {"bbox": [25, 25, 90, 90], "caption": "dog", "category_name": "dog", "occludes": "1"},
          {"bbox": [10, 10, 60, 60], "caption": "box", "category_name": "box", "occludes": " 1 , 2 "}
        ]}"#;
    let l = load_str(text).unwrap();
    assert_eq!(l.format, Format::OcclusionFormer);
    let s = l.scene.scene();
    assert_eq!(s.instances[2].occludes, vec!["1", "2"]);
    assert_eq!(
        s.caption, None,
        "a caption equal to the prompt is not kept twice"
    );
    assert_eq!(l.scene.graph().occluders(0), &[1, 2]);
    assert_eq!(s.full_prompt(), "p, cat, dog, box");
    // Export normalises the spacing but keeps every relation.
    let out = export(s, Format::OcclusionFormer).unwrap();
    assert!(out.contains("\"occludes\": \"1,2\""), "{out}");
}

#[test]
fn occlusionformer_reads_invalid_xyxy_as_xywh_with_a_warning() {
    let l = load_str(
        r#"{"prompt": "", "height": 100, "width": 100,
            "annos": [{"bbox": [50, 40, 20, 30], "caption": "cat", "occludes": ""}]}"#,
    )
    .unwrap();
    assert_eq!(
        l.scene.scene().instances[0].bbox,
        BBox::new(50.0, 40.0, 70.0, 70.0)
    );
    assert_eq!(l.warnings.len(), 1);
    assert_eq!(l.warnings[0].path, "annos[0].bbox");
    assert!(l.warnings[0].message.contains("[x, y, width, height]"));
}

#[test]
fn occlusionformer_index_out_of_range_is_an_error() {
    let e = load_str(
        r#"{"prompt": "", "height": 100, "width": 100,
            "annos": [{"bbox": [0, 0, 20, 30], "caption": "cat", "occludes": "3"},
                      {"bbox": [0, 0, 20, 30], "caption": "dog", "occludes": "0,x"}]}"#,
    )
    .unwrap_err();
    let msgs: Vec<String> = e
        .errors()
        .map(|d| format!("{} {}", d.path, d.message))
        .collect();
    assert_eq!(msgs.len(), 3, "{msgs:?}");
    assert!(
        msgs[0].starts_with("annos[0].occludes index 3 is out of range"),
        "{msgs:?}"
    );
    assert!(
        msgs[1].starts_with("annos[1].occludes index 0 is out of range"),
        "{msgs:?}"
    );
    assert!(msgs[2].contains("\"x\" is not an index"), "{msgs:?}");
    assert!(
        e.errors()
            .next()
            .unwrap()
            .hint
            .as_ref()
            .unwrap()
            .contains("1-based")
    );
}

#[test]
fn instance_assemble_has_no_order() {
    let l = load_str(
        r#"{"prompt": "a cat and a dog", "width": 512, "height": 512,
            "annos": [{"bbox": [0, 0, 300, 300], "category_name": "cat", "caption": "a cat"},
                      {"bbox": [200, 200, 500, 500], "category_name": "dog", "caption": "a dog"}]}"#,
    )
    .unwrap();
    assert_eq!(l.format, Format::InstanceAssemble);
    assert_eq!(l.scene.graph().edges().count(), 0);
    assert_eq!(
        l.scene.scene().instances[1].category.as_deref(),
        Some("dog")
    );
}

#[test]
fn larender_list_order_is_depth_last_in_front() {
    let l = load_str(
        r#"{"prompt": "still life", "width": 400, "height": 200,
            "objects": ["table", "vase", "lamp"],
            "locations": [[0.5, 1.0, 0.0, 1.0], [0.25, 0.75, 0.25, 0.5], [0.0, 0.2, 0.8, 1.0]],
            "alpha": [1.0, 0.8, 0.6]}"#,
    )
    .unwrap();
    assert_eq!(l.format, Format::LaRender);
    let s = l.scene.scene();
    // [top, bottom, left, right] normalised → pixel xyxy.
    assert_eq!(s.instances[1].bbox, BBox::new(100.0, 50.0, 200.0, 150.0));
    assert_eq!(
        s.instances[1].occludes,
        vec!["0"],
        "vase is in front of the table"
    );
    assert!(
        s.instances[2].occludes.is_empty(),
        "the lamp overlaps nothing"
    );
    assert_eq!(s.instances[2].opacity, Some(0.6));
    assert!(l.warnings.is_empty());
}

#[test]
fn larender_without_size_assumes_512_and_warns() {
    let l = load_str(
        r#"{"objects": ["a", "b"], "locations": [[0,0.5,0,0.5],[0.25,1,0.25,1]], "alpha": 0.8}"#,
    )
    .unwrap();
    let s = l.scene.scene();
    assert_eq!((s.width, s.height), (512, 512));
    assert_eq!(s.instances[0].opacity, Some(0.8));
    assert!(l.warnings[0].message.contains("assuming 512×512"));
}

#[test]
fn larender_count_mismatch_names_the_field() {
    let e = import_str(r#"{"objects": ["a", "b"], "locations": [[0,0.5,0,0.5]]}"#).unwrap_err();
    assert_eq!(e.diagnostics[0].path, "locations");
    assert!(
        e.diagnostics[0]
            .message
            .contains("1 locations for 2 objects")
    );
}

#[test]
fn gligen_normalised_xyxy() {
    let l = load_str(
        r#"{"prompt": "a dog on grass", "phrases": ["a dog", "a ball"],
            "locations": [[0.1, 0.2, 0.5, 0.9], [0.4, 0.6, 0.6, 0.8]], "width": 512, "height": 256}"#,
    )
    .unwrap();
    assert_eq!(l.format, Format::Gligen);
    let s = l.scene.scene();
    assert_eq!(s.instances[0].bbox, BBox::new(51.2, 51.2, 256.0, 230.4));
    assert_eq!(s.instances[1].caption, "a ball");
    assert_eq!(l.scene.graph().edges().count(), 0);
}

#[test]
fn instaorder_strings_and_mutual_pairs() {
    assert_eq!(parse_order_string("1<0").unwrap(), vec![(1, 0)]);
    assert_eq!(
        parse_order_string(" 0<2 & 2<0 ").unwrap(),
        vec![(0, 2), (2, 0)]
    );
    assert!(parse_order_string("1>0").unwrap_err().contains("A<B"));
    assert!(parse_order_string("a<0").unwrap_err().contains("0-based"));

    let l = load_str(
        r#"{"width": 640, "height": 480, "prompt": "street",
            "annotations": [{"bbox": [10, 10, 100, 100], "category_name": "person"},
                            {"bbox": [50, 50, 100, 100], "category_name": "car", "caption": "a red car"},
                            {"bbox": [80, 20, 100, 100], "category_name": "dog"}],
            "occlusion": ["1<0", {"order": "0<2 & 2<0"}]}"#,
    )
    .unwrap();
    assert_eq!(l.format, Format::InstaOrder);
    let s = l.scene.scene();
    assert_eq!(
        s.instances[0].bbox,
        BBox::new(10.0, 10.0, 110.0, 110.0),
        "COCO xywh"
    );
    assert_eq!(
        s.instances[0].caption, "person",
        "caption falls back to the category"
    );
    let g = l.scene.graph();
    assert_eq!(g.occluders(0), &[1]);
    assert_eq!(g.unordered_pairs(), &[(0, 2)]);
}

#[test]
fn instaorder_out_of_range_index() {
    let e = import_str(
        r#"{"width": 64, "height": 64, "annotations": [{"bbox": [0,0,9,9], "caption": "a"}], "occlusion": ["1<0"]}"#,
    )
    .unwrap_err();
    assert_eq!(e.diagnostics[0].path, "occlusion[0]");
    assert!(e.diagnostics[0].message.contains("index 1 is out of range"));
}

#[test]
fn native_to_occlusionformer_maps_ids_to_positions() {
    let scene = import_str(
        r#"{"width": 64, "height": 64, "prompt": "p", "instances": [
            {"id": "b", "caption": "back", "bbox": [0,0,40,40]},
            {"id": "f", "caption": "front", "bbox": [20,20,60,60], "occludes": ["b"]}]}"#,
    )
    .unwrap()
    .scene;
    let out = export(&scene, Format::OcclusionFormer).unwrap();
    let back = load_str(&out).unwrap();
    assert_eq!(back.scene.graph().occluders(0), &[1]);
    assert_eq!(back.scene.scene().instances[1].occludes, vec!["1"]);
    assert!(export(&scene, Format::Gligen).is_err());
}
