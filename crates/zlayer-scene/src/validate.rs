//! Validation: from a scene as written to a [`ValidScene`] the model can trust.
//!
//! All checks run and report together. Errors reject the scene; warnings describe what was
//! changed (boxes clipped to the canvas) or what looks unintended (an order between boxes
//! that do not overlap). A valid scene has:
//! - a canvas of 1..=8192 px per side and at most 50 instances (the official limit);
//! - unique non-empty ids, non-empty captions, finite boxes of positive area inside the canvas;
//! - `occludes` naming known ids other than itself, and no occlusion cycle.

use crate::diag::{Diagnostic, SceneError, finish};
use crate::formats::{Field, Format, Imported, import_str};
use crate::graph::OcclusionGraph;
use crate::raster::rle_runs;
use crate::scene::{MaskSpec, Scene};
use std::collections::HashMap;

/// Largest canvas side in pixels.
pub const MAX_SIDE: u32 = 8192;
/// Most instances in one scene (the official OcclusionFormer limit).
pub const MAX_INSTANCES: usize = 50;

/// A scene that passed validation, with its occlusion graph (indices follow `instances`).
#[derive(Debug, Clone, PartialEq)]
pub struct ValidScene {
    scene: Scene,
    graph: OcclusionGraph,
}

/// A validated scene, the format it came from, and the warnings raised on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The scene.
    pub scene: ValidScene,
    /// Its source format.
    pub format: Format,
    /// Import and validation warnings.
    pub warnings: Vec<Diagnostic>,
}

impl ValidScene {
    /// The scene (boxes clipped to the canvas).
    pub fn scene(&self) -> &Scene {
        &self.scene
    }

    /// The occlusion graph.
    pub fn graph(&self) -> &OcclusionGraph {
        &self.graph
    }

    /// Gives back the plain scene.
    pub fn into_scene(self) -> Scene {
        self.scene
    }
}

/// Parses JSON text in any known format and validates it.
pub fn load_str(text: &str) -> Result<Loaded, SceneError> {
    validate(import_str(text)?)
}

/// Validates a scene already in native form (built in code, not read from a file).
pub fn validate_native(scene: Scene) -> Result<Loaded, SceneError> {
    validate(Imported {
        scene,
        format: Format::Native,
        warnings: Vec::new(),
    })
}

/// Validates an imported scene.
pub fn validate(imported: Imported) -> Result<Loaded, SceneError> {
    let Imported {
        mut scene,
        format,
        mut warnings,
    } = imported;
    let mut diags = Vec::new();
    check_canvas(&scene, &mut diags);
    if scene.instances.len() > MAX_INSTANCES {
        diags.push(
            Diagnostic::error(
                format.field_path(0, Field::Whole).replace("[0]", ""),
                format!(
                    "{} instances; at most {MAX_INSTANCES} are supported",
                    scene.instances.len()
                ),
            )
            .hint("split the scene, or merge small objects into one instance"),
        );
    }
    if scene.instances.is_empty() {
        diags.push(Diagnostic::warning(
            "",
            "the scene has no instances; only the prompt will guide generation",
        ));
    }
    let ids = check_ids(&scene, format, &mut diags);
    let canvas_ok = !diags.iter().any(Diagnostic::is_error);
    let canvas = scene.canvas();
    for (i, inst) in scene.instances.iter_mut().enumerate() {
        let at = |f| format.field_path(i, f);
        if inst.caption.trim().is_empty() {
            diags.push(
                Diagnostic::error(at(Field::Caption), "empty caption")
                    .on(&inst.id)
                    .hint("describe the object, e.g. \"red striped sphere\""),
            );
        }
        if let Some(a) = inst.opacity
            && !(0.0..=1.0).contains(&a)
        {
            diags.push(
                Diagnostic::error(at(Field::Opacity), format!("opacity {a} is outside [0, 1]"))
                    .on(&inst.id),
            );
        }
        let b = inst.bbox;
        if !b.is_finite() {
            diags.push(
                Diagnostic::error(
                    at(Field::BBox),
                    format!("box {:?} has a non-finite coordinate", b.to_array()),
                )
                .on(&inst.id),
            );
        } else if b.x2 <= b.x1 || b.y2 <= b.y1 {
            diags.push(
                Diagnostic::error(
                    at(Field::BBox),
                    format!(
                        "box {:?} has no area: x2 must exceed x1 and y2 must exceed y1",
                        b.to_array()
                    ),
                )
                .on(&inst.id)
                .hint("boxes are [x1, y1, x2, y2] in pixels, origin top-left"),
            );
        } else if canvas_ok {
            match b.intersect(canvas) {
                None => diags.push(
                    Diagnostic::error(at(Field::BBox), format!("box {:?} lies entirely outside the {}×{} canvas", b.to_array(), scene.width, scene.height))
                        .on(&inst.id)
                        .hint("boxes are in pixels of the canvas; normalised [0, 1] boxes belong in GLIGEN or LaRender files"),
                ),
                Some(c) if c != b => {
                    diags.push(
                        Diagnostic::warning(at(Field::BBox), format!("box {:?} extends past the {}×{} canvas; clipped to {:?}", b.to_array(), scene.width, scene.height, c.to_array()))
                            .on(&inst.id),
                    );
                    inst.bbox = c;
                }
                Some(_) => {}
            }
        }
        if let Some(m) = &inst.mask {
            check_mask(
                m,
                scene.width,
                scene.height,
                at(Field::Mask),
                &inst.id,
                &mut diags,
            );
        }
    }
    let mut edges = Vec::new();
    if let Some(ids) = &ids {
        for (i, inst) in scene.instances.iter().enumerate() {
            let path = format.field_path(i, Field::Occludes);
            let mut seen = Vec::new();
            for target in &inst.occludes {
                match ids.get(target.as_str()) {
                    None => diags.push(
                        Diagnostic::error(path.clone(), format!("unknown instance id {target:?}"))
                            .on(&inst.id)
                            .hint(format!("known ids: {}", known_ids(&scene))),
                    ),
                    Some(&j) if j == i => diags.push(
                        Diagnostic::error(path.clone(), "an instance cannot occlude itself")
                            .on(&inst.id),
                    ),
                    Some(&j) if seen.contains(&j) => diags.push(
                        Diagnostic::warning(path.clone(), format!("{target:?} is listed twice"))
                            .on(&inst.id),
                    ),
                    Some(&j) => {
                        seen.push(j);
                        edges.push((i, j));
                    }
                }
            }
        }
    }
    let graph = if diags.iter().any(Diagnostic::is_error) {
        None
    } else {
        match OcclusionGraph::from_edges(scene.instances.len(), &edges) {
            Ok(g) => Some(g),
            Err(cycle) => {
                diags.push(cycle_error(&scene, format, &cycle.0));
                None
            }
        }
    };
    if let Some(g) = &graph {
        for (f, b) in g.edges() {
            let (fi, bi) = (&scene.instances[f], &scene.instances[b]);
            if !fi.bbox.overlaps(bi.bbox) {
                diags.push(
                    Diagnostic::warning(
                        format.field_path(f, Field::Occludes),
                        format!("{:?} is declared in front of {:?}, but their boxes do not overlap, so the order has no effect", fi.id, bi.id),
                    )
                    .on(&fi.id),
                );
            }
        }
    }
    warnings.extend(finish(diags)?);
    Ok(Loaded {
        scene: ValidScene {
            scene,
            graph: graph.expect("no errors implies a graph"),
        },
        format,
        warnings,
    })
}

fn check_canvas(scene: &Scene, diags: &mut Vec<Diagnostic>) {
    for (name, v) in [("width", scene.width), ("height", scene.height)] {
        if v == 0 || v > MAX_SIDE {
            diags.push(
                Diagnostic::error(
                    name,
                    format!("canvas {name} {v} is outside 1..={MAX_SIDE} px"),
                )
                .hint("generate at a supported size and upscale afterwards"),
            );
        }
    }
}

/// Id → index, or `None` when ids are not unique (then `occludes` cannot be resolved).
fn check_ids(
    scene: &Scene,
    format: Format,
    diags: &mut Vec<Diagnostic>,
) -> Option<HashMap<String, usize>> {
    let mut ids = HashMap::new();
    let mut ok = true;
    for (i, inst) in scene.instances.iter().enumerate() {
        if inst.id.trim().is_empty() {
            diags.push(
                Diagnostic::error(format.field_path(i, Field::Id), "empty id")
                    .hint("give every instance a unique id, e.g. \"cube\""),
            );
            ok = false;
        } else if let Some(&first) = ids.get(inst.id.as_str()) {
            diags.push(
                Diagnostic::error(
                    format.field_path(i, Field::Id),
                    format!(
                        "duplicate id {:?}, first used by {}",
                        inst.id,
                        format.field_path(first, Field::Whole)
                    ),
                )
                .on(&inst.id)
                .hint("ids must be unique within a scene"),
            );
            ok = false;
        } else {
            ids.insert(inst.id.clone(), i);
        }
    }
    ok.then_some(ids)
}

fn check_mask(m: &MaskSpec, w: u32, h: u32, path: String, id: &str, diags: &mut Vec<Diagnostic>) {
    let problem = match m {
        MaskSpec::Rle { size, counts } => {
            if *size != [h, w] {
                Some(format!(
                    "RLE size {size:?} ([height, width]) does not match the {w}×{h} canvas"
                ))
            } else {
                match rle_runs(counts) {
                    Err(e) => Some(e.to_string()),
                    Ok(r)
                        if r.iter().fold(0u64, |a, &x| a.saturating_add(x))
                            != w as u64 * h as u64 =>
                    {
                        Some(format!("RLE counts do not add up to {}×{} pixels", w, h))
                    }
                    Ok(_) => None,
                }
            }
        }
        MaskSpec::Polygons(p) => p
            .iter()
            .position(|q| q.len() % 2 != 0 || q.len() < 6 || !q.iter().all(|v| v.is_finite()))
            .map(|k| {
                format!("polygon {k} must be [x0, y0, x1, y1, ...] with at least 3 finite points")
            }),
        MaskSpec::Png { png } => png.trim().is_empty().then(|| "empty PNG path".to_string()),
    };
    if let Some(msg) = problem {
        diags.push(
            Diagnostic::error(path, msg)
                .on(id)
                .hint("a mask is {\"size\": [h, w], \"counts\": ...} (COCO RLE), [[x0, y0, ...]] (polygons) or {\"png\": \"file.png\"}"),
        );
    }
}

fn cycle_error(scene: &Scene, format: Format, cycle: &[usize]) -> Diagnostic {
    let name = |i: usize| {
        format!(
            "{:?} ({})",
            scene.instances[i].id, scene.instances[i].caption
        )
    };
    let mut chain: Vec<String> = cycle.iter().map(|&i| name(i)).collect();
    chain.push(name(cycle[0]));
    Diagnostic::error(
        format.field_path(cycle[0], Field::Occludes),
        format!("occlusion cycle: {}", chain.join(" occludes ")),
    )
    .on(&scene.instances[cycle[0]].id)
    .hint("boxes cannot be drawn in a cycle; remove one relation, or declare a pair in both directions to leave it unordered")
}

fn known_ids(scene: &Scene) -> String {
    let ids: Vec<String> = scene
        .instances
        .iter()
        .take(12)
        .map(|i| format!("{:?}", i.id))
        .collect();
    let more = scene.instances.len().saturating_sub(12);
    if more > 0 {
        format!("{}, and {more} more", ids.join(", "))
    } else {
        ids.join(", ")
    }
}
