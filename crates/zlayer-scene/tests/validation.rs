//! Every validation error says what, where (JSON path, instance id) and how to fix it.

use zlayer_scene::{BBox, SceneError, load_str};

fn native(instances: &str) -> String {
    format!(r#"{{"width": 100, "height": 80, "prompt": "p", "instances": [{instances}]}}"#)
}

fn err(text: &str) -> SceneError {
    load_str(text).expect_err("must be rejected")
}

fn one_error(text: &str) -> (String, String, Option<String>) {
    let e = err(text);
    let errors: Vec<_> = e.errors().collect();
    assert_eq!(errors.len(), 1, "{e}");
    let d = errors[0];
    (d.path.clone(), d.message.clone(), d.instance.clone())
}

#[test]
fn malformed_json_reports_line_and_column() {
    let e = err("{\"width\": 10,\n \"height\": }");
    let d = &e.diagnostics[0];
    assert!(d.message.starts_with("malformed JSON"), "{}", d.message);
    assert!(d.message.contains("line 2"), "{}", d.message);
    assert!(d.hint.is_some());
}

#[test]
fn wrong_type_names_the_path() {
    let (path, msg, _) = one_error(&native(
        r#"{"id": "a", "caption": "c", "bbox": [0, 0, "ten", 10]}"#,
    ));
    assert_eq!(path, "instances[0].bbox[2]");
    assert!(msg.contains("invalid type: string \"ten\""), "{msg}");
}

#[test]
fn a_non_object_top_level_is_rejected() {
    let e = err("[1, 2]");
    assert!(e.diagnostics[0].message.contains("found an array"));
    let e = err(r#"{"foo": 1}"#);
    assert!(
        e.diagnostics[0]
            .message
            .contains("not a scene in any known format")
    );
    assert!(e.diagnostics[0].hint.as_ref().unwrap().contains("GLIGEN"));
}

#[test]
fn unknown_and_duplicate_ids() {
    let (path, msg, inst) = one_error(&native(
        r#"{"id": "a", "caption": "c", "bbox": [0, 0, 10, 10], "occludes": ["zz"]},
           {"id": "b", "caption": "d", "bbox": [0, 0, 10, 10]}"#,
    ));
    assert_eq!(
        (path.as_str(), inst.as_deref()),
        ("instances[0].occludes", Some("a"))
    );
    assert_eq!(msg, "unknown instance id \"zz\"");

    let (path, msg, _) = one_error(&native(
        r#"{"id": "a", "caption": "c", "bbox": [0, 0, 10, 10]},
           {"id": "a", "caption": "d", "bbox": [0, 0, 10, 10]}"#,
    ));
    assert_eq!(path, "instances[1].id");
    assert!(
        msg.contains("duplicate id \"a\", first used by instances[0]"),
        "{msg}"
    );
}

#[test]
fn self_occlusion_and_empty_caption() {
    let (_, msg, _) = one_error(&native(
        r#"{"id": "a", "caption": "c", "bbox": [0,0,9,9], "occludes": ["a"]}"#,
    ));
    assert!(msg.contains("cannot occlude itself"));
    let (path, msg, inst) = one_error(&native(
        r#"{"id": "a", "caption": "  ", "bbox": [0,0,9,9]}"#,
    ));
    assert_eq!(
        (path.as_str(), msg.as_str(), inst.as_deref()),
        ("instances[0].caption", "empty caption", Some("a"))
    );
}

#[test]
fn degenerate_boxes() {
    let (path, msg, _) = one_error(&native(
        r#"{"id": "a", "caption": "c", "bbox": [20, 0, 10, 10]}"#,
    ));
    assert_eq!(path, "instances[0].bbox");
    assert!(msg.contains("has no area"), "{msg}");
    let (_, msg, _) = one_error(&native(
        r#"{"id": "a", "caption": "c", "bbox": [5, 5, 5, 10]}"#,
    ));
    assert!(msg.contains("has no area"), "zero width: {msg}");
    // JSON cannot spell NaN or infinity; a number too large for f64 is a parse error.
    let (path, msg, _) = one_error(&native(
        r#"{"id": "a", "caption": "c", "bbox": [0, 0, 1e999, 10]}"#,
    ));
    assert!(
        msg.contains("malformed JSON") || path.contains("bbox"),
        "{path} {msg}"
    );
}

#[test]
fn boxes_are_clipped_with_a_warning_or_rejected_when_outside() {
    let l = load_str(&native(
        r#"{"id": "a", "caption": "c", "bbox": [-10, 70, 50, 120]}"#,
    ))
    .unwrap();
    assert_eq!(
        l.scene.scene().instances[0].bbox,
        BBox::new(0.0, 70.0, 50.0, 80.0)
    );
    assert_eq!(l.warnings.len(), 1);
    assert!(
        l.warnings[0]
            .message
            .contains("clipped to [0.0, 70.0, 50.0, 80.0]"),
        "{}",
        l.warnings[0]
    );

    let (path, msg, _) = one_error(&native(
        r#"{"id": "a", "caption": "c", "bbox": [100, 0, 150, 10]}"#,
    ));
    assert_eq!(path, "instances[0].bbox");
    assert!(msg.contains("entirely outside the 100×80 canvas"), "{msg}");
}

#[test]
fn canvas_and_instance_limits() {
    let (path, msg, _) = one_error(r#"{"width": 9000, "height": 80, "instances": []}"#);
    assert_eq!(path, "width");
    assert!(msg.contains("outside 1..=8192"), "{msg}");
    let (path, _, _) = one_error(r#"{"width": 10, "height": 0, "instances": []}"#);
    assert_eq!(path, "height");

    let many: Vec<String> = (0..51)
        .map(|i| format!(r#"{{"id": "i{i}", "caption": "c", "bbox": [0, 0, 10, 10]}}"#))
        .collect();
    let (path, msg, _) = one_error(&native(&many.join(",")));
    assert_eq!(path, "instances");
    assert!(msg.contains("51 instances; at most 50"), "{msg}");
}

#[test]
fn cycle_error_names_every_member_by_id_and_caption() {
    let (path, msg, inst) = one_error(&native(
        r#"{"id": "a", "caption": "red sphere", "bbox": [0,0,50,50], "occludes": ["b"]},
           {"id": "b", "caption": "blue cube", "bbox": [20,20,70,70], "occludes": ["c"]},
           {"id": "c", "caption": "green stick", "bbox": [10,10,60,60], "occludes": ["a"]}"#,
    ));
    assert_eq!(path, "instances[0].occludes");
    assert_eq!(inst.as_deref(), Some("a"));
    assert_eq!(
        msg,
        "occlusion cycle: \"a\" (red sphere) occludes \"b\" (blue cube) occludes \"c\" (green stick) occludes \"a\" (red sphere)"
    );
}

#[test]
fn mutual_pair_is_accepted_as_unordered() {
    let l = load_str(&native(
        r#"{"id": "a", "caption": "x", "bbox": [0,0,50,50], "occludes": ["b"]},
           {"id": "b", "caption": "y", "bbox": [20,20,70,70], "occludes": ["a"]}"#,
    ))
    .unwrap();
    assert_eq!(l.scene.graph().unordered_pairs(), &[(0, 1)]);
    assert!(l.scene.graph().occluders(0).is_empty());
}

#[test]
fn order_between_disjoint_boxes_warns() {
    let l = load_str(&native(
        r#"{"id": "a", "caption": "x", "bbox": [0,0,10,10], "occludes": ["b"]},
           {"id": "b", "caption": "y", "bbox": [50,50,70,70]}"#,
    ))
    .unwrap();
    assert_eq!(l.warnings.len(), 1);
    assert!(l.warnings[0].message.contains("do not overlap"));
    assert_eq!(l.warnings[0].instance.as_deref(), Some("a"));
}

#[test]
fn bad_masks_are_rejected() {
    let (path, msg, _) = one_error(&native(
        r#"{"id": "a", "caption": "x", "bbox": [0,0,10,10], "mask": {"size": [80, 100], "counts": [5, 3]}}"#,
    ));
    assert_eq!(path, "instances[0].mask");
    assert!(msg.contains("do not add up"), "{msg}");
    let (_, msg, _) = one_error(&native(
        r#"{"id": "a", "caption": "x", "bbox": [0,0,10,10], "mask": {"size": [10, 10], "counts": [100]}}"#,
    ));
    assert!(msg.contains("does not match the 100×80 canvas"), "{msg}");
    let (_, msg, _) = one_error(&native(
        r#"{"id": "a", "caption": "x", "bbox": [0,0,10,10], "mask": [[0, 0, 5]]}"#,
    ));
    assert!(msg.contains("polygon 0"), "{msg}");
}

#[test]
fn all_errors_are_reported_together() {
    let e = err(&native(
        r#"{"id": "a", "caption": "", "bbox": [0,0,10,10]},
           {"id": "b", "caption": "y", "bbox": [10,0,5,5], "occludes": ["q"]}"#,
    ));
    assert_eq!(e.errors().count(), 3, "{e}");
    assert!(e.to_string().ends_with("(3 errors)"));
}
