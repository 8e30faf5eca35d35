//! The parser and validator never panic, on any bytes or any scene-shaped JSON, and what
//! they accept holds its invariants.

use proptest::prelude::*;
use serde_json::{Value, json};
use zlayer_scene::{Format, export, load_str};

fn num() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-50i64..600).prop_map(Value::from),
        (-1e3f64..1e3).prop_map(Value::from),
        Just(json!(1e308)),
        Just(json!("7")),
        Just(Value::Null),
    ]
}

fn id() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0u8..6).prop_map(|i| json!(format!("i{i}"))),
        (0u8..6).prop_map(Value::from),
        Just(json!(""))
    ]
}

fn instance() -> impl Strategy<Value = Value> {
    (id(), prop::collection::vec(num(), 3..6), prop::collection::vec(id(), 0..4), any::<bool>(), num())
        .prop_map(|(id, bbox, occ, cap, op)| {
            json!({"id": id, "caption": if cap { "thing" } else { "" }, "bbox": bbox, "occludes": occ, "opacity": op})
        })
}

fn native_scene() -> impl Strategy<Value = Value> {
    (num(), num(), prop::collection::vec(instance(), 0..7))
        .prop_map(|(w, h, inst)| json!({"width": w, "height": h, "prompt": "p", "instances": inst}))
}

fn official_scene() -> impl Strategy<Value = Value> {
    let anno = (prop::collection::vec(num(), 4..5), "[0-9, x]{0,6}").prop_map(
        |(bbox, occ)| json!({"bbox": bbox, "caption": "c", "category_name": "c", "occludes": occ}),
    );
    (prop::collection::vec(anno, 0..7), 1u32..300)
        .prop_map(|(annos, s)| json!({"prompt": "p", "caption": "p", "width": s, "height": s, "annos": annos}))
}

fn check_accepted(text: &str) {
    let Ok(l) = load_str(text) else { return };
    let s = l.scene.scene();
    for inst in &s.instances {
        let b = inst.bbox;
        assert!(b.x1 >= 0.0 && b.y1 >= 0.0 && b.x2 <= s.width as f64 && b.y2 <= s.height as f64);
        assert!(b.area() > 0.0);
    }
    let g = l.scene.graph();
    let order = g.draw_order();
    for (front, back) in g.edges() {
        let pos = |i| order.iter().position(|&k| k == i).unwrap();
        assert!(pos(back) < pos(front));
    }
    // Whatever is accepted exports and re-imports to the same graph.
    let out = export(s, Format::OcclusionFormer).unwrap();
    let back = load_str(&out).unwrap();
    assert_eq!(
        back.scene.graph().edges().collect::<Vec<_>>(),
        g.edges().collect::<Vec<_>>()
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,200}") {
        let _ = load_str(&s);
    }

    #[test]
    fn json_fragments_never_panic(s in r#"[\[\]{}",:0-9a-z. \-]{0,120}"#) {
        let _ = load_str(&s);
    }

    #[test]
    fn native_scenes_never_panic(v in native_scene()) {
        check_accepted(&v.to_string());
    }

    #[test]
    fn official_scenes_never_panic(v in official_scene()) {
        check_accepted(&v.to_string());
    }
}
