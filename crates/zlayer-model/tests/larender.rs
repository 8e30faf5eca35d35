//! LaRender on the base model: its limits are the base model's own forward passes, and a batch
//! equals its scenes one at a time.

mod common;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use common::max_diff;
use zlayer_model::base::BaseModel;
use zlayer_model::init::seeded;
use zlayer_model::larender::Copies;
use zlayer_model::layout_model::{InstanceLayout, SceneLayout};
use zlayer_model::sampling::noise;
use zlayer_model::text::{TextConfig, Tokenizer};
use zlayer_model::{Config, FluxInput};

const GRID: (usize, usize) = (4, 4);

fn base(dev: &Device) -> BaseModel {
    let tok = Tokenizer::new(["a", "red", "blue", "sphere", "cube", "on", "sky"]);
    let text = TextConfig {
        vocab: tok.len(),
        max_len: 8,
        width: 32,
        layers: 1,
        heads: 2,
        pooled: 16,
    };
    let dit = Config {
        in_channels: 4,
        hidden_size: 32,
        num_heads: 2,
        depth: 2,
        depth_single_blocks: 2,
        context_in_dim: 32,
        vec_in_dim: 16,
        axes_dim: [4, 6, 6],
        ..Config::tiny()
    };
    let vm = VarMap::new();
    BaseModel::new(&dit, &text, tok, seeded(&vm, 0, DType::F32, dev)).unwrap()
}

fn object(caption: &str, cells: &[usize], occluders: Vec<usize>) -> InstanceLayout {
    let mut soft = vec![0f32; 16];
    for &c in cells {
        soft[c] = 1.0;
    }
    InstanceLayout {
        caption: caption.into(),
        bbox: [0.0, 0.0, 1.0, 1.0],
        tokens: cells.to_vec(),
        soft,
        occluders,
        level: 0,
        amodal: None,
    }
}

#[test]
fn a_scene_without_objects_is_the_base_model_and_a_dense_front_object_takes_over() {
    let dev = Device::Cpu;
    let m = base(&dev);
    let prompt = "a red sphere on a blue sky";
    let ids = m.tokenizer.batch(&[prompt], m.max_len, &dev).unwrap();
    let x = noise((1, 16, 4), 1, &dev).unwrap();
    let t = Tensor::new(&[0.4f32], &dev).unwrap();

    let empty = SceneLayout { instances: vec![] };
    let copies = Copies::new(&m, &[prompt], &[empty], 16, &dev).unwrap();
    let got = m
        .velocity_larender(&x, &t, &ids, &copies, 1.6, GRID)
        .unwrap();
    let want = m.velocity(&x, &t, &ids, GRID).unwrap();
    let d = max_diff(&got, &want);
    assert!(d < 1e-5, "background alone differs from the base by {d}");

    // An opaque object over every token: its caption replaces the prompt as the text the
    // image attends to; modulation still comes from the global prompt.
    let all: Vec<usize> = (0..16).collect();
    let front = SceneLayout {
        instances: vec![object("blue cube", &all, vec![])],
    };
    let copies = Copies::new(&m, &[prompt], &[front], 16, &dev).unwrap();
    let got = m
        .velocity_larender(&x, &t, &ids, &copies, 60.0, GRID)
        .unwrap();
    // The caption as the copy holds it (padded with the scene's other texts).
    let (txt, _) = m
        .text
        .forward(&copies.ids.narrow(0, 1, 1).unwrap())
        .unwrap();
    let (_, y) = m.text.forward(&ids).unwrap();
    let lt = txt.dim(1).unwrap();
    let want = m
        .dit
        .forward(&FluxInput {
            img: &x,
            img_ids: &BaseModel::image_ids(1, 4, 4, &dev).unwrap(),
            txt: &txt,
            txt_ids: &Tensor::zeros((1, lt, 3), DType::F32, &dev).unwrap(),
            timesteps: &t,
            y: &y,
            guidance: None,
        })
        .unwrap();
    let d = max_diff(&got, &want);
    assert!(d < 1e-4, "an opaque full-canvas object differs by {d}");
    let diff_from_base = max_diff(&got, &m.velocity(&x, &t, &ids, GRID).unwrap());
    assert!(diff_from_base > 1e-3, "the object's caption must matter");
}

#[test]
fn a_batch_equals_its_scenes_one_at_a_time() {
    let dev = Device::Cpu;
    let m = base(&dev);
    // Texts pad to the longest of a batch, and padding is attended as in Flux: equal longest
    // lengths per scene keep the padding equal between the batch and each scene alone.
    let prompts = ["a red sphere on sky", "a blue cube on sky"];
    let scenes = [
        SceneLayout {
            instances: vec![
                object("red sphere", &[0, 1, 4, 5, 6], vec![1]),
                object("blue cube", &[5, 6, 9, 10], vec![]),
            ],
        },
        SceneLayout {
            instances: vec![object("blue cube", &[10, 11, 14, 15], vec![])],
        },
    ];
    let x = noise((2, 16, 4), 2, &dev).unwrap();
    let t = Tensor::new(&[0.3f32, 0.8], &dev).unwrap();
    let ids = m.tokenizer.batch(&prompts, m.max_len, &dev).unwrap();
    let copies = Copies::new(&m, &prompts, &scenes, 16, &dev).unwrap();
    assert_eq!(copies.scene, vec![0, 0, 0, 1, 1]);
    assert_eq!(
        copies.occluders[0],
        vec![1, 2],
        "the background is behind its objects"
    );
    assert_eq!(
        copies.occluders[1],
        vec![2],
        "occluders move with the copies"
    );
    let batch = m
        .velocity_larender(&x, &t, &ids, &copies, 3.0, GRID)
        .unwrap();
    for b in 0..2 {
        let one = |t: &Tensor| t.narrow(0, b, 1).unwrap();
        let c = Copies::new(&m, &prompts[b..=b], &scenes[b..=b], 16, &dev).unwrap();
        let alone = m
            .velocity_larender(&one(&x), &one(&t), &one(&ids), &c, 3.0, GRID)
            .unwrap();
        let d = max_diff(&one(&batch), &alone);
        // A batch runs other gemm blockings, so sums round in another order: allow about
        // a hundred f32 ulps of the largest output (near 5 here). With unseeded weights one
        // run in 100 differed by 1.6e-5, beyond the absolute 1e-5 this test once had.
        let top: f32 = alone.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        assert!(
            d < 1e-5 * top.max(1.0),
            "scene {b}: batched differs by {d} (largest {top})"
        );
    }
}
