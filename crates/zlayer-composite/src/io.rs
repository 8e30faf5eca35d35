//! Files: PNG (8- and 16-bit, straight alpha) and atomic writes.
//!
//! Every file zlayer writes goes through [`atomic_write`]: a temporary file in the same
//! folder, fsync, then rename, so an interrupted run never leaves a torn image or checkpoint.

use crate::rgba::{Image, Straight, quantize8, quantize16};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What went wrong reading or writing a file.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The file system refused.
    #[error("{path}: {source}")]
    Fs {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a PNG we can read.
    #[error("{path}: not a readable PNG ({reason})")]
    Png {
        /// The file.
        path: PathBuf,
        /// The decoder's words.
        reason: String,
    },
    /// The image cannot be encoded.
    #[error("{path}: cannot write PNG ({reason})")]
    Encode {
        /// The file.
        path: PathBuf,
        /// The encoder's words.
        reason: String,
    },
}

/// PNG sample depth for writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BitDepth {
    /// 8 bits per channel.
    Eight,
    /// 16 bits per channel.
    Sixteen,
}

/// Writes a file atomically: temp file beside it, fsync, rename.
pub fn atomic_write(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<(), IoError> {
    let fs = |source| IoError::Fs {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        write(&mut f)?;
        f.flush()?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(fs)
}

/// Encodes a straight-alpha image as PNG bytes (sRGB, RGBA).
pub fn encode_png(img: &Image<Straight>, depth: BitDepth) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut buf, img.width as u32, img.height as u32);
        enc.set_color(png::ColorType::Rgba);
        enc.set_source_srgb(png::SrgbRenderingIntent::Perceptual);
        let data: Vec<u8> = match depth {
            BitDepth::Eight => {
                enc.set_depth(png::BitDepth::Eight);
                img.pixels.iter().flat_map(|p| p.0.map(quantize8)).collect()
            }
            BitDepth::Sixteen => {
                enc.set_depth(png::BitDepth::Sixteen);
                img.pixels
                    .iter()
                    .flat_map(|p| p.0.map(quantize16))
                    .flat_map(u16::to_be_bytes)
                    .collect()
            }
        };
        let mut w = enc.write_header().map_err(|e| e.to_string())?;
        w.write_image_data(&data).map_err(|e| e.to_string())?;
        w.finish().map_err(|e| e.to_string())?;
    }
    Ok(buf)
}

/// Encodes 8-bit grey values (e.g. a mask) as a greyscale PNG.
pub fn encode_grey_png(width: usize, height: usize, values: &[u8]) -> Result<Vec<u8>, String> {
    if values.len() != width * height {
        return Err(format!(
            "{} values for a {width}×{height} image",
            values.len()
        ));
    }
    let mut buf = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut buf, width as u32, height as u32);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(|e| e.to_string())?;
        w.write_image_data(values).map_err(|e| e.to_string())?;
        w.finish().map_err(|e| e.to_string())?;
    }
    Ok(buf)
}

/// Writes a straight-alpha image as PNG, atomically.
pub fn write_png(path: &Path, img: &Image<Straight>, depth: BitDepth) -> Result<(), IoError> {
    let bytes = encode_png(img, depth).map_err(|reason| IoError::Encode {
        path: path.to_path_buf(),
        reason,
    })?;
    atomic_write(path, |f| f.write_all(&bytes))
}

/// Decodes PNG bytes of any colour type and depth to straight RGBA f32.
pub fn decode_png(bytes: &[u8]) -> Result<Image<Straight>, String> {
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
    // Palette and sub-byte grey become 8-bit; tRNS becomes an alpha channel.
    dec.set_transformations(png::Transformations::EXPAND);
    let mut reader = dec.read_info().map_err(|e| e.to_string())?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| "image too large".to_string())?;
    let mut buf = vec![0; size];
    let info = reader.next_frame(&mut buf).map_err(|e| e.to_string())?;
    let (w, h) = (info.width as usize, info.height as usize);
    let buf = &buf[..info.buffer_size()];
    let samples: Vec<f32> = match info.bit_depth {
        png::BitDepth::Sixteen => buf
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]) as f32 / 65535.0)
            .collect(),
        png::BitDepth::Eight => buf.iter().map(|&v| v as f32 / 255.0).collect(),
        d => return Err(format!("unsupported bit depth {d:?} after expansion")),
    };
    let pixels: Vec<Straight> = match info.color_type {
        png::ColorType::Rgba => samples
            .chunks_exact(4)
            .map(|c| Straight([c[0], c[1], c[2], c[3]]))
            .collect(),
        png::ColorType::Rgb => samples
            .chunks_exact(3)
            .map(|c| Straight([c[0], c[1], c[2], 1.0]))
            .collect(),
        png::ColorType::GrayscaleAlpha => samples
            .chunks_exact(2)
            .map(|c| Straight([c[0], c[0], c[0], c[1]]))
            .collect(),
        png::ColorType::Grayscale => samples.iter().map(|&g| Straight([g, g, g, 1.0])).collect(),
        png::ColorType::Indexed => return Err("palette was not expanded".into()),
    };
    if pixels.len() != w * h {
        return Err(format!(
            "decoded {} pixels for a {w}×{h} image",
            pixels.len()
        ));
    }
    Ok(Image {
        width: w,
        height: h,
        pixels,
    })
}

/// Reads a PNG file to straight RGBA f32.
pub fn read_png(path: &Path) -> Result<Image<Straight>, IoError> {
    let bytes = std::fs::read(path).map_err(|source| IoError::Fs {
        path: path.to_path_buf(),
        source,
    })?;
    decode_png(&bytes).map_err(|reason| IoError::Png {
        path: path.to_path_buf(),
        reason,
    })
}

/// Reads a mask PNG: alpha is the coverage when the image has transparency, else luma.
pub fn read_mask_png(path: &Path) -> Result<zlayer_scene::Mask, IoError> {
    let img = read_png(path)?;
    let has_alpha = img.pixels.iter().any(|p| p.0[3] < 1.0);
    let data = img
        .pixels
        .iter()
        .map(|p| {
            if has_alpha {
                p.0[3]
            } else {
                0.2126 * p.0[0] + 0.7152 * p.0[1] + 0.0722 * p.0[2]
            }
        })
        .collect();
    Ok(zlayer_scene::Mask {
        width: img.width,
        height: img.height,
        data,
    })
}
