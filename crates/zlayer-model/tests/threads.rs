//! `fix_thread_count` pins candle's matmul thread count to the value candle itself chooses.
//! This binary holds one test, so nothing else reads the environment while it changes.

#[test]
fn the_thread_count_is_pinned_to_candles_own_choice() {
    let chosen = candle_core::utils::get_num_threads();
    assert!(chosen >= 1);
    zlayer_model::fix_thread_count();
    let set = std::env::var("RAYON_NUM_THREADS").expect("set, or already given");
    assert_eq!(set.parse::<usize>().ok(), Some(chosen), "{set:?}");
    assert_eq!(candle_core::utils::get_num_threads(), chosen);
    // A second call changes nothing.
    zlayer_model::fix_thread_count();
    assert_eq!(std::env::var("RAYON_NUM_THREADS").unwrap(), set);
}
