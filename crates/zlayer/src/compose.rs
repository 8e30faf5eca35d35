//! `zlayer compose`: stack PNG layers into a PNG, an OpenRaster file or a Photoshop document.

use std::path::{Path, PathBuf};
use zlayer_app::Failure;
use zlayer_composite::ora::write_ora;
use zlayer_composite::psd::write_psd;
use zlayer_composite::{BitDepth, Layer, LayerStack, read_png, write_png};

/// Runs the command.
pub fn run(layers: &[PathBuf], output: &Path, sixteen_bit: bool) -> Result<(), Failure> {
    let ext = output
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let kind = match ext.as_deref() {
        Some(k @ ("ora" | "png" | "psd")) => k.to_string(),
        _ => {
            return Err(Failure::User(format!(
                "{}: the output must end in .png (flattened), .ora (OpenRaster) or .psd (Photoshop; GIMP opens it), the last two keeping the layers",
                output.display()
            )));
        }
    };
    let mut stack = Vec::with_capacity(layers.len());
    for path in layers {
        let image = read_png(path).map_err(|e| Failure::User(e.to_string()))?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        stack.push(Layer::new(name, image));
    }
    let stack = LayerStack::from_layers(stack);
    for (l, path) in stack.layers.iter().zip(layers) {
        if (l.image.width, l.image.height) != (stack.width, stack.height) {
            eprintln!(
                "warning: {} is {}×{}, the canvas is {}×{}; it is placed at the top-left",
                path.display(),
                l.image.width,
                l.image.height,
                stack.width,
                stack.height
            );
        }
    }
    let depth = if sixteen_bit {
        BitDepth::Sixteen
    } else {
        BitDepth::Eight
    };
    match kind.as_str() {
        "ora" => write_ora(output, &stack, depth).map_err(|e| Failure::User(e.to_string()))?,
        "psd" => {
            if sixteen_bit {
                eprintln!(
                    "note: a PSD is written with 8 bits per channel; --16 applies to .png and .ora"
                );
            }
            write_psd(output, &stack).map_err(|e| Failure::User(e.to_string()))?
        }
        _ => {
            write_png(output, &stack.flatten(), depth).map_err(|e| Failure::User(e.to_string()))?
        }
    }
    eprintln!(
        "wrote {} ({} layers, {}×{})",
        output.display(),
        stack.layers.len(),
        stack.width,
        stack.height
    );
    Ok(())
}
