//! Axis-aligned amodal boxes in canvas pixels.
//!
//! Boxes are `[x1, y1, x2, y2]`, origin top-left, half-open (DESIGN.md §2). They are kept in
//! `f64` so that JSON round-trips are exact; integral coordinates serialise as JSON integers,
//! which is what every importer format we read uses.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An axis-aligned box `[x1, y1, x2, y2]` in canvas pixels, half-open.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BBox {
    /// Left edge (inclusive).
    pub x1: f64,
    /// Top edge (inclusive).
    pub y1: f64,
    /// Right edge (exclusive).
    pub x2: f64,
    /// Bottom edge (exclusive).
    pub y2: f64,
}

impl BBox {
    /// A box from its corners.
    pub const fn new(x1: f64, y1: f64, x2: f64, y2: f64) -> Self {
        Self { x1, y1, x2, y2 }
    }

    /// The box as `[x1, y1, x2, y2]`.
    pub fn to_array(self) -> [f64; 4] {
        [self.x1, self.y1, self.x2, self.y2]
    }

    /// Width; negative when the corners are swapped.
    pub fn width(self) -> f64 {
        self.x2 - self.x1
    }

    /// Height; negative when the corners are swapped.
    pub fn height(self) -> f64 {
        self.y2 - self.y1
    }

    /// Area, or 0 for an empty or inverted box.
    pub fn area(self) -> f64 {
        self.width().max(0.0) * self.height().max(0.0)
    }

    /// All four coordinates are finite.
    pub fn is_finite(self) -> bool {
        self.to_array().iter().all(|v| v.is_finite())
    }

    /// The intersection, or `None` when it has no area.
    pub fn intersect(self, other: BBox) -> Option<BBox> {
        let b = BBox::new(
            self.x1.max(other.x1),
            self.y1.max(other.y1),
            self.x2.min(other.x2),
            self.y2.min(other.y2),
        );
        (b.width() > 0.0 && b.height() > 0.0).then_some(b)
    }

    /// Whether two boxes share a region of positive area.
    pub fn overlaps(self, other: BBox) -> bool {
        self.intersect(other).is_some()
    }

    /// Intersection over union; 0 for disjoint or empty boxes.
    pub fn iou(self, other: BBox) -> f64 {
        let inter = self.intersect(other).map_or(0.0, BBox::area);
        let union = self.area() + other.area() - inter;
        if union > 0.0 { inter / union } else { 0.0 }
    }

    /// The centre `(cx, cy)`.
    pub fn center(self) -> (f64, f64) {
        ((self.x1 + self.x2) / 2.0, (self.y1 + self.y2) / 2.0)
    }
}

impl Serialize for BBox {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(4))?;
        for v in self.to_array() {
            seq.serialize_element(&Coord(v))?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for BBox {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let [x1, y1, x2, y2] = <[f64; 4]>::deserialize(d)?;
        Ok(BBox::new(x1, y1, x2, y2))
    }
}

/// A number that serialises as a JSON integer when it is one, so `54` stays `54`, not `54.0`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Coord(pub f64);

impl Serialize for Coord {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v = self.0;
        // 2^53: beyond it not every integer is representable, so keep the float form.
        if v.fract() == 0.0 && v.abs() < 9.007_199_254_740_992e15 {
            s.serialize_i64(v as i64)
        } else {
            s.serialize_f64(v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_of_half_overlap() {
        let a = BBox::new(0.0, 0.0, 2.0, 1.0);
        let b = BBox::new(1.0, 0.0, 3.0, 1.0);
        assert_eq!(a.intersect(b), Some(BBox::new(1.0, 0.0, 2.0, 1.0)));
        assert!((a.iou(b) - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn touching_boxes_do_not_overlap() {
        let a = BBox::new(0.0, 0.0, 2.0, 2.0);
        let b = BBox::new(2.0, 0.0, 4.0, 2.0);
        assert!(!a.overlaps(b));
        assert_eq!(a.iou(b), 0.0);
    }

    #[test]
    fn integral_coordinates_serialise_as_integers() {
        let s = serde_json::to_string(&BBox::new(54.0, 463.5, 673.0, -1.0)).unwrap();
        assert_eq!(s, "[54,463.5,673,-1]");
    }
}
