//! The multi-task layer model: padding is invisible, conditions stay fixed, the loss reads
//! targets only, every parameter learns, and bad frames are named.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use zlayer_model::init::seeded;
use zlayer_model::omni::{Batch, Frame, Omni, OmniConfig, Role, Sequence, Task};
use zlayer_model::sampling::{Rng, training_draw};

fn cfg() -> OmniConfig {
    OmniConfig {
        latent: 3,
        hidden: 32,
        heads: 2,
        depth: 2,
        axes_dim: [4, 6, 6],
        vocab: 5,
        levels: 4,
    }
}

fn model(seed: u64) -> (Omni, VarMap) {
    let vm = VarMap::new();
    let m = Omni::new(&cfg(), seeded(&vm, seed, DType::F32, &Device::Cpu)).unwrap();
    (m, vm)
}

/// A random sequence: a full 4×4 image condition, then `n` instance targets of random boxes.
fn sequence(rng: &mut Rng, n: usize) -> Sequence {
    let c = cfg().latent;
    let vals =
        |rng: &mut Rng, k: usize| (0..k * c).map(|_| rng.normal() as f32).collect::<Vec<_>>();
    let mut frames = vec![Frame::full(Role::Image, false, vals(rng, 16), (4, 4))];
    for _ in 0..n {
        let (r0, c0) = ((rng.next_u64() % 3) as usize, (rng.next_u64() % 3) as usize);
        let cells: Vec<(usize, usize)> = (r0..r0 + 2)
            .flat_map(|r| (c0..c0 + 2).map(move |q| (r, q)))
            .collect();
        let latent = vals(rng, cells.len());
        frames.push(Frame {
            role: Role::Layer,
            target: true,
            cells,
            latent,
            words: vec![(rng.next_u64() % 5) as u32, 1],
            level: (rng.next_u64() % 6) as usize,
            bbox: [0.1, 0.2, 0.5, 0.6],
        });
    }
    Sequence {
        task: Task::Decompose,
        frames,
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn a_sequence_reads_the_same_alone_and_padded_beside_a_longer_one() {
    let (m, _) = model(3);
    let dev = Device::Cpu;
    let mut rng = Rng::new(11);
    for trial in 0..8 {
        let short = sequence(&mut rng, 1 + trial % 2);
        let long = sequence(&mut rng, 3 + trial % 3);
        let t = Tensor::new(&[0.3f32], &dev).unwrap();
        let alone = Batch::new(std::slice::from_ref(&short), m.config(), &dev).unwrap();
        let v_alone = m.forward(&alone.x0, &alone, &t).unwrap();
        let both = Batch::new(&[short.clone(), long], m.config(), &dev).unwrap();
        let t2 = Tensor::new(&[0.3f32, 0.8], &dev).unwrap();
        let v_both = m.forward(&both.x0, &both, &t2).unwrap();
        let n = short.len();
        let a = v_alone.get(0).unwrap().narrow(0, 0, n).unwrap();
        let b = v_both.get(0).unwrap().narrow(0, 0, n).unwrap();
        assert!(
            max_diff(&a, &b) < 1e-5,
            "trial {trial}: {}",
            max_diff(&a, &b)
        );
    }
}

#[test]
fn sampling_keeps_conditions_and_moves_targets() {
    let (m, vm) = model(5);
    // Random modulations: a fresh model's gates are not zero, so targets move.
    assert!(!vm.all_vars().is_empty());
    let dev = Device::Cpu;
    let mut rng = Rng::new(2);
    let seqs = [sequence(&mut rng, 2), sequence(&mut rng, 4)];
    let b = Batch::new(&seqs, m.config(), &dev).unwrap();
    let x = m.sample(&b, &[1.0, 0.6, 0.2, 0.0], 9).unwrap();
    for (i, s) in seqs.iter().enumerate() {
        for (f, frame) in s.frames.iter().enumerate() {
            let got = b
                .frame(&x, i, f)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            if frame.target {
                assert_ne!(got, frame.latent, "a target is sampled, not copied");
            } else {
                assert_eq!(
                    got, frame.latent,
                    "sequence {i} frame {f}: conditions stay exactly"
                );
            }
        }
    }
}

#[test]
fn the_loss_is_the_mean_squared_velocity_error_over_target_tokens() {
    let (m, _) = model(8);
    let dev = Device::Cpu;
    let mut rng = Rng::new(4);
    let seqs = vec![sequence(&mut rng, 2), sequence(&mut rng, 4)];
    let b = Batch::new(&seqs, m.config(), &dev).unwrap();
    let got = m.loss(&b, 17).unwrap().to_scalar::<f32>().unwrap() as f64;
    // Naive reference: the same draw, then a sum over the target frames' tokens only.
    let (xt, t, v) = training_draw(&b.x0, 17).unwrap();
    let pred = m.forward(&b.with_targets(&xt).unwrap(), &b, &t).unwrap();
    let (mut se, mut count) = (0f64, 0usize);
    for (i, s) in seqs.iter().enumerate() {
        for (f, frame) in s.frames.iter().enumerate().filter(|(_, f)| f.target) {
            let p = b
                .frame(&pred, i, f)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let w = b
                .frame(&v, i, f)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(p.len(), frame.latent.len());
            se += p
                .iter()
                .zip(&w)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum::<f64>();
            count += p.len();
        }
    }
    let want = se / count as f64;
    assert!(
        (got - want).abs() < 1e-5 * want.max(1.0),
        "{got} against {want}"
    );
}

#[test]
fn every_parameter_receives_a_gradient() {
    let (m, vm) = model(8);
    let dev = Device::Cpu;
    let mut rng = Rng::new(4);
    let seqs = vec![sequence(&mut rng, 2), sequence(&mut rng, 3)];
    let b = Batch::new(&seqs, m.config(), &dev).unwrap();
    let grads = m.loss(&b, 1).unwrap().backward().unwrap();
    let data = vm.data().lock().unwrap();
    for (name, var) in data.iter() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        let norm = g
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0, "{name}: zero gradient");
    }
}

#[test]
fn bad_frames_are_named() {
    let (m, _) = model(0);
    let dev = Device::Cpu;
    let mut rng = Rng::new(1);
    let mut s = sequence(&mut rng, 2);
    s.frames[2].latent.pop();
    let e = Batch::new(&[s], m.config(), &dev).unwrap_err().to_string();
    assert!(e.contains("frame 2") && e.contains("cells"), "{e}");
    let mut s = sequence(&mut rng, 1);
    s.frames[1].words = vec![7];
    let e = Batch::new(&[s], m.config(), &dev).unwrap_err().to_string();
    assert!(e.contains("frame 1") && e.contains("word id 7"), "{e}");
}

#[test]
fn a_frames_place_on_the_layer_axis_is_read() {
    // Swapping two target frames moves each to the other's place on the layer axis; the same
    // tokens then come out differently.
    let (m, _) = model(2);
    let dev = Device::Cpu;
    let mut rng = Rng::new(3);
    let s = sequence(&mut rng, 2);
    let mut swapped = s.clone();
    swapped.frames.swap(1, 2);
    let b = Batch::new(std::slice::from_ref(&s), m.config(), &dev).unwrap();
    let b2 = Batch::new(&[swapped], m.config(), &dev).unwrap();
    let t = Tensor::new(&[0.5f32], &dev).unwrap();
    let v = m.forward(&b.x0, &b, &t).unwrap();
    let v2 = m.forward(&b2.x0, &b2, &t).unwrap();
    // The frames' tokens are the same set in another order; frame 1 of `s` is frame 2 of
    // `swapped`, now at layer position 2 instead of 1.
    let a = b.frame(&v, 0, 1).unwrap();
    let c = b2.frame(&v2, 0, 2).unwrap();
    assert!(max_diff(&a, &c) > 1e-6, "the layer axis position is read");
}
