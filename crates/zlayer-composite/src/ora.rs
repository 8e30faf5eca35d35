//! OpenRaster (.ora): a layer stack that GIMP, Krita and MyPaint open as layers.
//!
//! The file is a zip whose first entry is an uncompressed `mimetype` holding exactly
//! `image/openraster` (so `file(1)` and apps can sniff it), then `stack.xml`, one PNG per layer
//! under `data/`, `mergedimage.png` (the flattened image) and `Thumbnails/thumbnail.png`
//! (at most 256 px). In `stack.xml` the top of the stack comes first.
//! PNGs are stored, not deflated: they are already compressed.

use crate::io::{BitDepth, IoError, atomic_write, decode_png, encode_png};
use crate::layers::{Layer, LayerStack, thumbnail};
use crate::psd::XMP_NS;
use std::io::{Cursor, Read, Write};
use std::path::Path;
use zip::CompressionMethod;
use zip::write::SimpleFileOptions;

/// The `mimetype` entry's exact content.
pub const MIMETYPE: &str = "image/openraster";

/// Why an OpenRaster file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum OraError {
    /// File system or PNG problem.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The zip container is broken.
    #[error("{0}: not a valid OpenRaster zip ({1})")]
    Zip(String, String),
    /// The content does not follow the OpenRaster layout.
    #[error("{0}: {1}")]
    Format(String, String),
}

/// Text as XML character data or an attribute value.
pub(crate) fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The inverse of [`xml_escape`] (and `&apos;`).
pub(crate) fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// The zip entry that holds a stack's metadata.
pub const METADATA_ENTRY: &str = "zlayer.json";

/// Encodes a stack as OpenRaster bytes.
pub fn encode_ora(stack: &LayerStack, depth: BitDepth) -> Result<Vec<u8>, String> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let stored = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
    let deflated = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
    let err = |e: zip::result::ZipError| e.to_string();
    zip.start_file("mimetype", stored).map_err(err)?;
    zip.write_all(MIMETYPE.as_bytes())
        .map_err(|e| e.to_string())?;

    // The metadata's entry is named on <image>, in zlayer's namespace, for readers that look.
    let meta_attr = match stack.metadata {
        Some(_) => format!(" xmlns:zlayer=\"{XMP_NS}\" zlayer:metadata=\"{METADATA_ENTRY}\""),
        None => String::new(),
    };
    let mut xml = format!(
        "<?xml version='1.0' encoding='UTF-8'?>\n<image version=\"0.0.5\" w=\"{}\" h=\"{}\"{meta_attr}>\n <stack>\n",
        stack.width, stack.height
    );
    for (k, l) in stack.layers.iter().enumerate().rev() {
        xml += &format!(
            "  <layer name=\"{}\" src=\"data/layer{k:03}.png\" x=\"{}\" y=\"{}\" opacity=\"{:.6}\" visibility=\"{}\" composite-op=\"svg:src-over\"/>\n",
            xml_escape(&l.name),
            l.x,
            l.y,
            l.opacity,
            if l.visible { "visible" } else { "hidden" },
        );
    }
    xml += " </stack>\n</image>\n";
    zip.start_file("stack.xml", deflated).map_err(err)?;
    zip.write_all(xml.as_bytes()).map_err(|e| e.to_string())?;

    for (k, l) in stack.layers.iter().enumerate() {
        zip.start_file(format!("data/layer{k:03}.png"), stored)
            .map_err(err)?;
        zip.write_all(&encode_png(&l.image, depth)?)
            .map_err(|e| e.to_string())?;
    }
    if let Some(m) = &stack.metadata {
        zip.start_file(METADATA_ENTRY, deflated).map_err(err)?;
        zip.write_all(m.as_bytes()).map_err(|e| e.to_string())?;
    }
    let merged = stack.flatten();
    zip.start_file("mergedimage.png", stored).map_err(err)?;
    zip.write_all(&encode_png(&merged, depth)?)
        .map_err(|e| e.to_string())?;
    zip.start_file("Thumbnails/thumbnail.png", stored)
        .map_err(err)?;
    zip.write_all(&encode_png(&thumbnail(&merged, 256), BitDepth::Eight)?)
        .map_err(|e| e.to_string())?;
    Ok(zip.finish().map_err(err)?.into_inner())
}

/// Writes a stack as an OpenRaster file, atomically.
pub fn write_ora(path: &Path, stack: &LayerStack, depth: BitDepth) -> Result<(), OraError> {
    let bytes =
        encode_ora(stack, depth).map_err(|r| OraError::Format(path.display().to_string(), r))?;
    atomic_write(path, |f| f.write_all(&bytes))?;
    Ok(())
}

/// Reads an OpenRaster file into a stack (nested stacks are flattened in drawing order).
pub fn read_ora(path: &Path) -> Result<LayerStack, OraError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| IoError::Fs {
        path: path.to_path_buf(),
        source,
    })?;
    decode_ora(&bytes).map_err(|e| match e {
        OraError::Zip(_, r) => OraError::Zip(name, r),
        OraError::Format(_, r) => OraError::Format(name, r),
        other => other,
    })
}

/// Decodes OpenRaster bytes.
pub fn decode_ora(bytes: &[u8]) -> Result<LayerStack, OraError> {
    let zerr = |e: zip::result::ZipError| OraError::Zip(String::new(), e.to_string());
    let ferr = |m: String| OraError::Format(String::new(), m);
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(zerr)?;
    let mut read = |name: &str| -> Result<Vec<u8>, OraError> {
        let mut f = zip.by_name(name).map_err(zerr)?;
        let mut v = Vec::new();
        f.read_to_end(&mut v)
            .map_err(|e| ferr(format!("{name}: {e}")))?;
        Ok(v)
    };
    let mime = read("mimetype")?;
    if mime != MIMETYPE.as_bytes() {
        return Err(ferr(format!(
            "mimetype is {:?}, expected {MIMETYPE:?}",
            String::from_utf8_lossy(&mime)
        )));
    }
    let xml =
        String::from_utf8(read("stack.xml")?).map_err(|_| ferr("stack.xml is not UTF-8".into()))?;
    let doc = roxmltree::Document::parse(&xml).map_err(|e| ferr(format!("stack.xml: {e}")))?;
    let root = doc.root_element();
    let dim = |k: &str| -> Result<usize, OraError> {
        root.attribute(k)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                ferr(format!(
                    "stack.xml: <image> needs a numeric {k:?} attribute"
                ))
            })
    };
    let (width, height) = (dim("w")?, dim("h")?);
    let mut layers = Vec::new();
    for node in root.descendants().filter(|n| n.has_tag_name("layer")) {
        let src = node
            .attribute("src")
            .ok_or_else(|| ferr("stack.xml: a <layer> has no src".into()))?;
        let png = read(src)?;
        let image = decode_png(&png).map_err(|r| ferr(format!("{src}: {r}")))?;
        let num = |k: &str, d: f64| {
            node.attribute(k)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(d)
        };
        layers.push(Layer {
            name: node.attribute("name").unwrap_or("").to_string(),
            image,
            x: num("x", 0.0) as i64,
            y: num("y", 0.0) as i64,
            opacity: num("opacity", 1.0).clamp(0.0, 1.0) as f32,
            visible: node.attribute("visibility") != Some("hidden"),
        });
    }
    // The file lists the top first; the stack keeps the bottom first.
    layers.reverse();
    let metadata = match read(METADATA_ENTRY) {
        Ok(b) => {
            Some(String::from_utf8(b).map_err(|_| ferr(format!("{METADATA_ENTRY} is not UTF-8")))?)
        }
        Err(_) => None,
    };
    Ok(LayerStack {
        width,
        height,
        layers,
        metadata,
    })
}
