//! Rasterisation: token coverage rule, soft masks against a naive pixel reference, COCO RLE
//! against pycocotools, polygons.

use zlayer_scene::raster::encode_rle_string;
use zlayer_scene::{BBox, Mask, RleCounts, TokenGrid};

#[test]
fn every_box_gets_at_least_one_token() {
    let g = TokenGrid::new(4, 4);
    // A sliver inside one 16-px cell of a 64-px canvas.
    assert_eq!(
        g.box_tokens(BBox::new(17.0, 17.0, 18.0, 18.0), 64, 64),
        vec![5]
    );
    // A box at the far edge still gets the last token.
    assert_eq!(
        g.box_tokens(BBox::new(63.0, 0.0, 64.0, 16.0), 64, 64),
        vec![3]
    );
    // Half-open: x2 = 32 ends at token column 2 (exclusive).
    assert_eq!(
        g.box_tokens(BBox::new(0.0, 0.0, 32.0, 16.0), 64, 64),
        vec![0, 1]
    );
}

#[test]
fn soft_mask_equals_area_averaged_pixel_mask() {
    // Naive reference: rasterise the integer box at pixel level, then average each cell.
    let (w, h) = (48u32, 40u32);
    let grid = TokenGrid::new(6, 5);
    let mut seed = 12345u64;
    let mut rnd = |n: u32| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 33) % n as u64) as f64
    };
    for _ in 0..500 {
        let (x1, y1) = (rnd(w), rnd(h));
        let b = BBox::new(
            x1,
            y1,
            x1 + 1.0 + rnd(w - x1 as u32),
            y1 + 1.0 + rnd(h - y1 as u32),
        );
        let soft = grid.soft_box_mask(b, w, h);
        let pixel = Mask::from_box(b, w as usize, h as usize);
        let pooled = pixel.to_tokens(grid);
        for t in 0..grid.len() {
            let (cx, cy) = (t % 6, t / 6);
            let mut inside = 0;
            for y in cy * 8..cy * 8 + 8 {
                for x in cx * 8..cx * 8 + 8 {
                    let (x, y) = (x as f64, y as f64);
                    inside += (x >= b.x1 && x < b.x2 && y >= b.y1 && y < b.y2) as u32;
                }
            }
            let naive = inside as f32 / 64.0;
            assert!(
                (soft.data[t] - naive).abs() < 1e-6,
                "{b:?} token {t} soft {} naive {naive}",
                soft.data[t]
            );
            assert!(
                (pooled.data[t] - naive).abs() < 1e-6,
                "{b:?} token {t} pooled {} naive {naive}",
                pooled.data[t]
            );
        }
        // The official rule drops a partly covered last cell, but never a fully covered one.
        let hard = grid.box_mask(b, w, h);
        for t in 0..grid.len() {
            assert!(soft.data[t] < 1.0 || hard.data[t] == 1.0, "{b:?} token {t}");
        }
    }
}

#[test]
fn fractional_boxes_cover_fractional_area() {
    let m = Mask::from_box(BBox::new(0.5, 0.0, 2.25, 1.0), 3, 1);
    assert_eq!(m.data, vec![0.5, 1.0, 0.25]);
}

// Made with pycocotools 2.0:
//   m = np.zeros((7, 9), np.uint8, order='F'); m[1:5, 2:7] = 1; m[6, 0] = 1; m[0, 8] = 1
//   pycocotools.mask.encode(m) -> {'size': [7, 9], 'counts': b'6183K00000006MM'}
const COCO_COUNTS: &str = "6183K00000006MM";

fn coco_reference_mask() -> Mask {
    let mut m = Mask::zeros(9, 7);
    for y in 1..5 {
        for x in 2..7 {
            m.data[y * 9 + x] = 1.0;
        }
    }
    m.data[6 * 9] = 1.0;
    m.data[8] = 1.0;
    m
}

#[test]
fn compressed_rle_matches_pycocotools() {
    let expected = coco_reference_mask();
    let m = Mask::from_rle([7, 9], &RleCounts::Compressed(COCO_COUNTS.into()), 9, 7).unwrap();
    assert_eq!(m, expected);
    assert_eq!(encode_rle_string(&expected.to_rle()), COCO_COUNTS);
    let list = Mask::from_rle([7, 9], &RleCounts::List(expected.to_rle()), 9, 7).unwrap();
    assert_eq!(list, expected);
}

#[test]
fn rle_errors() {
    assert!(Mask::from_rle([7, 9], &RleCounts::List(vec![3, 4]), 9, 7).is_err());
    assert!(Mask::from_rle([9, 7], &RleCounts::List(vec![63]), 9, 7).is_err());
    assert!(Mask::from_rle([7, 9], &RleCounts::Compressed("6183K0000000~".into()), 9, 7).is_err());
    assert!(
        Mask::from_rle(
            [7, 9],
            &RleCounts::Compressed("oooooooooooooooo".into()),
            9,
            7
        )
        .is_err()
    );
}

#[test]
fn polygon_fill_samples_pixel_centres() {
    // A rectangle polygon covers exactly the pixels whose centres are inside.
    let m = Mask::from_polygons(&[vec![1.0, 1.0, 4.0, 1.0, 4.0, 3.0, 1.0, 3.0]], 6, 5).unwrap();
    let on: Vec<usize> = (0..30).filter(|&i| m.data[i] == 1.0).collect();
    assert_eq!(on, vec![7, 8, 9, 13, 14, 15]);
    // A right triangle: half of a 10×10 square, within one row's rounding per row.
    let t = Mask::from_polygons(&[vec![0.0, 0.0, 10.0, 0.0, 0.0, 10.0]], 10, 10).unwrap();
    let area: f32 = t.data.iter().sum();
    assert!((area - 50.0).abs() <= 5.0, "{area}");
    assert!(Mask::from_polygons(&[vec![0.0, 0.0, 1.0]], 4, 4).is_err());
}
