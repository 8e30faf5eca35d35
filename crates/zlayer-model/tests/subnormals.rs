//! `flush_subnormals`: subnormal results become zero on the calling thread and on threads it
//! starts afterwards (rayon's gemm workers), and normal floats are untouched.

use std::hint::black_box;

fn product() -> f32 {
    black_box(1e-30f32) * black_box(1e-10f32)
}

#[test]
fn subnormals_flush_here_and_in_threads_started_after() {
    std::thread::spawn(|| {
        let before = product();
        assert!(
            before > 0.0 && !before.is_normal(),
            "a subnormal by default: {before:e}"
        );
        zlayer_model::flush_subnormals();
        assert_eq!(product(), 0.0);
        // Subnormal inputs read as zero too.
        let sub = black_box(f32::from_bits(1));
        assert_eq!(sub * black_box(1e30f32), 0.0);
        assert_eq!(black_box(1.5f32) * black_box(2.0f32), 3.0);
        assert_eq!(
            black_box(f32::MIN_POSITIVE) * black_box(1.0f32),
            f32::MIN_POSITIVE
        );
        let child = std::thread::spawn(product).join().unwrap();
        assert_eq!(child, 0.0, "a thread started afterwards inherits the mode");
    })
    .join()
    .unwrap();
    // Threads that did not ask keep IEEE subnormals.
    assert!(std::thread::spawn(product).join().unwrap() > 0.0);
}
