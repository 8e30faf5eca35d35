//! Photoshop documents (.psd): a layer stack that GIMP, Photoshop, Krita, Affinity and
//! Photopea open as layers. Debian 12's GIMP 2.10 has no OpenRaster loader but reads PSD.
//!
//! What is written (Adobe's "Photoshop File Formats Specification", version 1, 8-bit RGB):
//! - the header (`8BPS`, 3 channels, or 4 when the flattened image has transparency), empty
//!   colour-mode data, and as the one image resource, when the stack has metadata, an XMP
//!   packet (resource 1060) whose `zlayer:metadata` property holds it;
//! - the layer and mask section: one record per layer, bottom first (the file's order), with
//!   its rectangle, channels −1 (alpha), 0, 1, 2 of straight 8-bit colour, blend mode
//!   `norm`, opacity, visibility, the name as a Pascal string and, for any character outside
//!   ASCII, as UTF-16 in a `luni` block; channel data uncompressed;
//! - the flattened image, planar and uncompressed, for readers that show no layers.
//!
//! [`decode_psd`] reads back what [`encode_psd`] writes (uncompressed channels), so the
//! round trip is tested here; independent readers (psd-tools, GIMP) check the rest.

use crate::io::{IoError, atomic_write};
use crate::layers::{Layer, LayerStack};
use crate::rgba::{Image, Straight, quantize8};
use std::io::Write;
use std::path::Path;

/// Why a PSD file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PsdError {
    /// File system problem.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The content is not a PSD this reader understands.
    #[error("{0}: {1}")]
    Format(String, String),
}

/// zlayer's XMP namespace (also on OpenRaster's `<image>`).
pub const XMP_NS: &str = "https://github.com/zlayer/zlayer/ns/1.0/";

/// Photoshop's image resource id of XMP metadata.
pub const XMP_RESOURCE: u16 = 1060;

/// An XMP packet carrying `metadata` as the `zlayer:metadata` property.
fn xmp_packet(metadata: &str) -> String {
    format!(
        "<?xpacket begin=\"\u{feff}\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?><x:xmpmeta xmlns:x=\"adobe:ns:meta/\"><rdf:RDF xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\"><rdf:Description rdf:about=\"\" xmlns:zlayer=\"{XMP_NS}\"><zlayer:metadata>{}</zlayer:metadata></rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end=\"w\"?>",
        crate::ora::xml_escape(metadata)
    )
}

/// The `zlayer:metadata` property of an XMP packet, if it has one.
fn xmp_metadata(packet: &str) -> Option<String> {
    let (open, close) = ("<zlayer:metadata>", "</zlayer:metadata>");
    let start = packet.find(open)? + open.len();
    let end = start + packet[start..].find(close)?;
    Some(crate::ora::xml_unescape(&packet[start..end]))
}

/// Photoshop's largest canvas side for a PSD (larger needs PSB).
pub const MAX_SIDE: usize = 30_000;

struct Out(Vec<u8>);

impl Out {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn i16(&mut self, v: i16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    /// Writes a u32 length placeholder and returns where it is.
    fn length_here(&mut self) -> usize {
        self.u32(0);
        self.0.len()
    }
    /// Fills the placeholder at `at` with the bytes written since, after padding them to a
    /// multiple of `pad`.
    fn close_length(&mut self, at: usize, pad: usize) {
        while !(self.0.len() - at).is_multiple_of(pad) {
            self.0.push(0);
        }
        let n = (self.0.len() - at) as u32;
        self.0[at - 4..at].copy_from_slice(&n.to_be_bytes());
    }
}

/// A layer's name as PSD's Pascal string (ASCII; others become `?`), padded to 4 bytes.
fn pascal_name(name: &str) -> Vec<u8> {
    let ascii: Vec<u8> = name
        .chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c as u8
            } else {
                b'?'
            }
        })
        .take(255)
        .collect();
    let mut v = vec![ascii.len() as u8];
    v.extend_from_slice(&ascii);
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
    v
}

/// The planes of a straight image: alpha, red, green, blue, each 8-bit row-major.
fn planes(img: &Image<Straight>) -> [Vec<u8>; 4] {
    let q = |c: usize| {
        img.pixels
            .iter()
            .map(|p| quantize8(p.0[c]))
            .collect::<Vec<u8>>()
    };
    [q(3), q(0), q(1), q(2)]
}

/// Encodes a stack as PSD bytes (8-bit RGB, layers bottom first as in the stack).
pub fn encode_psd(stack: &LayerStack) -> Result<Vec<u8>, String> {
    let (w, h) = (stack.width, stack.height);
    if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE {
        return Err(format!(
            "a {w}×{h} canvas: a PSD holds 1 to {MAX_SIDE} pixels a side"
        ));
    }
    if stack.layers.len() > i16::MAX as usize {
        return Err(format!(
            "{} layers: a PSD holds at most {}",
            stack.layers.len(),
            i16::MAX
        ));
    }
    let merged = stack.flatten();
    let transparent = merged.pixels.iter().any(|p| p.0[3] < 1.0);
    let mut o = Out(Vec::new());
    o.bytes(b"8BPS");
    o.u16(1);
    o.bytes(&[0; 6]);
    o.u16(if transparent { 4 } else { 3 });
    o.u32(h as u32);
    o.u32(w as u32);
    o.u16(8);
    o.u16(3); // RGB
    o.u32(0); // colour-mode data
    let resources = o.length_here();
    if let Some(m) = &stack.metadata {
        let xmp = xmp_packet(m).into_bytes();
        o.bytes(b"8BIM");
        o.u16(XMP_RESOURCE);
        o.u16(0); // an empty name, padded to even
        o.u32(xmp.len() as u32);
        o.bytes(&xmp);
        if xmp.len() % 2 == 1 {
            o.u8(0);
        }
    }
    o.close_length(resources, 1);
    let section = o.length_here();
    let info = o.length_here();
    let count = stack.layers.len() as i16;
    // Negative: the flattened image's first extra channel is its transparency.
    o.i16(if transparent { -count } else { count });
    let data: Vec<[Vec<u8>; 4]> = stack.layers.iter().map(|l| planes(&l.image)).collect();
    for (l, planes) in stack.layers.iter().zip(&data) {
        let (lw, lh) = (l.image.width as i64, l.image.height as i64);
        for v in [l.y, l.x, l.y + lh, l.x + lw] {
            o.i32(
                i32::try_from(v)
                    .map_err(|_| format!("layer {:?}: offset {v} out of range", l.name))?,
            );
        }
        o.u16(4);
        for (id, plane) in [-1i16, 0, 1, 2].iter().zip(planes) {
            o.i16(*id);
            o.u32(plane.len() as u32 + 2);
        }
        o.bytes(b"8BIMnorm");
        o.u8(quantize8(l.opacity));
        o.u8(0); // clipping: base
        o.u8(if l.visible { 0 } else { 0x02 }); // bit 1 set: hidden
        o.u8(0);
        let extra = o.length_here();
        o.u32(0); // layer mask data
        o.u32(0); // blending ranges
        o.bytes(&pascal_name(&l.name));
        if !l.name.is_ascii() {
            o.bytes(b"8BIMluni");
            let block = o.length_here();
            let units: Vec<u16> = l.name.encode_utf16().collect();
            o.u32(units.len() as u32);
            for u in units {
                o.u16(u);
            }
            o.close_length(block, 4);
        }
        o.close_length(extra, 1);
    }
    for planes in &data {
        for plane in planes {
            o.u16(0); // raw
            o.bytes(plane);
        }
    }
    o.close_length(info, 2);
    o.u32(0); // global layer mask info
    o.close_length(section, 1);
    o.u16(0); // raw
    let [a, r, g, b] = planes(&merged);
    for plane in [&r, &g, &b] {
        o.bytes(plane);
    }
    if transparent {
        o.bytes(&a);
    }
    Ok(o.0)
}

/// Writes a stack as a PSD file, atomically.
pub fn write_psd(path: &Path, stack: &LayerStack) -> Result<(), PsdError> {
    let bytes = encode_psd(stack).map_err(|r| PsdError::Format(path.display().to_string(), r))?;
    atomic_write(path, |f| f.write_all(&bytes))?;
    Ok(())
}

struct In<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> In<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or_else(|| format!("truncated at byte {}", self.at))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn i16(&mut self) -> Result<i16, String> {
        Ok(self.u16()? as i16)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn i32(&mut self) -> Result<i32, String> {
        Ok(self.u32()? as i32)
    }
}

/// Decodes PSD bytes with uncompressed layer channels (as [`encode_psd`] writes them).
pub fn decode_psd(bytes: &[u8]) -> Result<LayerStack, String> {
    let mut r = In { b: bytes, at: 0 };
    if r.take(4)? != b"8BPS" || r.u16()? != 1 {
        return Err("not a PSD (no 8BPS version 1 header)".into());
    }
    r.take(6)?;
    let _channels = r.u16()?;
    let (height, width) = (r.u32()? as usize, r.u32()? as usize);
    let (depth, mode) = (r.u16()?, r.u16()?);
    if depth != 8 || mode != 3 {
        return Err(format!(
            "depth {depth}, colour mode {mode}: only 8-bit RGB is read"
        ));
    }
    let n = r.u32()? as usize; // colour-mode data
    r.take(n)?;
    let n = r.u32()? as usize;
    let mut res = In {
        b: r.take(n)?,
        at: 0,
    };
    let mut metadata = None;
    while res.at + 12 <= res.b.len() {
        if res.take(4)? != b"8BIM" {
            return Err("an image resource without its 8BIM signature".into());
        }
        let id = res.u16()?;
        let name = res.take(1)?[0] as usize;
        res.take(name + (name + 1) % 2)?; // the Pascal name, padded to even
        let size = res.u32()? as usize;
        let data = res.take(size)?;
        res.take(size % 2)?;
        if id == XMP_RESOURCE {
            metadata = xmp_metadata(&String::from_utf8_lossy(data));
        }
    }
    let _section = r.u32()?;
    let _info = r.u32()?;
    let count = r.i16()?.unsigned_abs() as usize;
    struct Rec {
        rect: [i32; 4],
        channels: Vec<(i16, usize)>,
        opacity: u8,
        flags: u8,
        name: String,
    }
    let mut recs = Vec::with_capacity(count);
    for _ in 0..count {
        let rect = [r.i32()?, r.i32()?, r.i32()?, r.i32()?];
        let n = r.u16()? as usize;
        let channels = (0..n)
            .map(|_| Ok((r.i16()?, r.u32()? as usize)))
            .collect::<Result<Vec<_>, String>>()?;
        if r.take(4)? != b"8BIM" {
            return Err("a layer record lacks its 8BIM blend signature".into());
        }
        r.take(4)?;
        let (opacity, _clip, flags, _) = (r.u8()?, r.u8()?, r.u8()?, r.u8()?);
        let extra = r.u32()? as usize;
        let end = r.at + extra;
        let mask = r.u32()? as usize;
        r.take(mask)?;
        let ranges = r.u32()? as usize;
        r.take(ranges)?;
        let len = r.u8()? as usize;
        let mut name = String::from_utf8_lossy(r.take(len)?).into_owned();
        r.take((4 - (len + 1) % 4) % 4)?;
        while r.at + 12 <= end {
            let (sig, key) = (r.take(4)?, r.take(4)?);
            let n = r.u32()? as usize;
            let block = r.take(n)?;
            if sig == b"8BIM" && key == b"luni" && block.len() >= 4 {
                let k = u32::from_be_bytes(block[..4].try_into().expect("4 bytes")) as usize;
                let units: Vec<u16> = block[4..]
                    .chunks_exact(2)
                    .take(k)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect();
                name = String::from_utf16_lossy(&units);
            }
        }
        r.at = end;
        recs.push(Rec {
            rect,
            channels,
            opacity,
            flags,
            name,
        });
    }
    let mut layers = Vec::with_capacity(count);
    for rec in recs {
        let [top, left, bottom, right] = rec.rect;
        let (lw, lh) = (
            (right - left).max(0) as usize,
            (bottom - top).max(0) as usize,
        );
        let mut px = vec![Straight([0.0, 0.0, 0.0, 1.0]); lw * lh];
        for (id, len) in rec.channels {
            let comp = r.u16()?;
            let data = r.take(len.saturating_sub(2))?;
            if comp != 0 {
                return Err(format!(
                    "layer {:?}: compression {comp}; only raw is read",
                    rec.name
                ));
            }
            let c = match id {
                -1 => 3,
                0..=2 => id as usize,
                _ => continue,
            };
            if data.len() != lw * lh {
                return Err(format!(
                    "layer {:?}: channel {id} has {} bytes for {lw}×{lh}",
                    rec.name,
                    data.len()
                ));
            }
            for (p, &v) in px.iter_mut().zip(data) {
                p.0[c] = v as f32 / 255.0;
            }
        }
        layers.push(Layer {
            name: rec.name,
            image: Image {
                width: lw,
                height: lh,
                pixels: px,
            },
            x: left as i64,
            y: top as i64,
            opacity: rec.opacity as f32 / 255.0,
            visible: rec.flags & 0x02 == 0,
        });
    }
    Ok(LayerStack {
        width,
        height,
        layers,
        metadata,
    })
}

/// Reads a PSD file (see [`decode_psd`]).
pub fn read_psd(path: &Path) -> Result<LayerStack, PsdError> {
    let bytes = std::fs::read(path).map_err(|source| IoError::Fs {
        path: path.to_path_buf(),
        source,
    })?;
    decode_psd(&bytes).map_err(|e| PsdError::Format(path.display().to_string(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(name: &str, w: usize, h: usize, seed: u32) -> Layer {
        let pixels = (0..w * h)
            .map(|i| {
                let v = |k: u32| ((i as u32 * 37 + seed * 11 + k * 101) % 256) as f32 / 255.0;
                Straight([v(0), v(1), v(2), v(3)])
            })
            .collect();
        Layer::new(
            name,
            Image {
                width: w,
                height: h,
                pixels,
            },
        )
    }

    #[test]
    fn a_stack_round_trips_with_names_offsets_opacity_and_visibility() {
        let mut top = layer("2: red sphere — front", 5, 3, 2);
        top.x = 4;
        top.y = -1;
        top.opacity = 0.5;
        top.visible = false;
        let stack = LayerStack {
            width: 9,
            height: 6,
            layers: vec![layer("background", 9, 6, 1), top, layer("猫", 2, 2, 3)],
            metadata: None,
        };
        let bytes = encode_psd(&stack).unwrap();
        assert_eq!(&bytes[..4], b"8BPS");
        let back = decode_psd(&bytes).unwrap();
        assert_eq!((back.width, back.height), (9, 6));
        assert_eq!(back.layers.len(), 3);
        for (a, b) in stack.layers.iter().zip(&back.layers) {
            assert_eq!(a.name, b.name);
            assert_eq!((a.x, a.y, a.visible), (b.x, b.y, b.visible));
            assert!((a.opacity - b.opacity).abs() <= 0.5 / 255.0 + 1e-6);
            assert_eq!(
                (a.image.width, a.image.height),
                (b.image.width, b.image.height)
            );
            for (p, q) in a.image.pixels.iter().zip(&b.image.pixels) {
                for c in 0..4 {
                    assert_eq!(quantize8(p.0[c]), quantize8(q.0[c]));
                }
            }
        }
    }

    #[test]
    fn the_flattened_image_follows_the_layers_and_keeps_transparency() {
        let opaque = LayerStack::from_layers(vec![Layer::new(
            "bg",
            Image {
                width: 2,
                height: 1,
                pixels: vec![
                    Straight([1.0, 0.0, 0.0, 1.0]),
                    Straight([0.0, 0.0, 1.0, 1.0]),
                ],
            },
        )]);
        let bytes = encode_psd(&opaque).unwrap();
        assert_eq!(
            u16::from_be_bytes([bytes[12], bytes[13]]),
            3,
            "RGB, no alpha"
        );
        // The last 2 + 3·2 bytes: raw flag, then R, G, B planes.
        assert_eq!(&bytes[bytes.len() - 8..], &[0, 0, 255, 0, 0, 0, 0, 255]);
        let clear = LayerStack::from_layers(vec![layer("glass", 3, 2, 5)]);
        let bytes = encode_psd(&clear).unwrap();
        assert_eq!(u16::from_be_bytes([bytes[12], bytes[13]]), 4);
        assert_eq!(decode_psd(&bytes).unwrap().layers.len(), 1);
    }

    #[test]
    fn bad_canvases_and_bytes_are_refused_with_reasons() {
        let empty = LayerStack {
            width: 0,
            height: 4,
            layers: vec![],
            metadata: None,
        };
        assert!(encode_psd(&empty).unwrap_err().contains("1 to 30000"));
        assert!(decode_psd(b"PNG").unwrap_err().contains("truncated"));
        assert!(decode_psd(b"8BPX\0\x01").unwrap_err().contains("not a PSD"));
        let bytes = encode_psd(&LayerStack::from_layers(vec![layer("a", 2, 2, 1)])).unwrap();
        assert!(
            decode_psd(&bytes[..bytes.len() / 2])
                .unwrap_err()
                .contains("truncated")
        );
    }
}
