//! The bundled tiny model (`models/tiny16`), built into the binary so that an installed or
//! copied `zlayer` and a server started anywhere find their default model.
//!
//! About 12 MB of f16 weights: the 16-channel VAE, the base, the OcclusionFormer branch, the
//! DecFormer that blends its latents, and the layer model with its alpha-aware VAE under
//! `layers/`. Its baselines and ablations are not trained yet; `models/tiny`, the older
//! 8-channel model, keeps a full set on disk. Cargo rebuilds when any of these files change.

use zlayer_model::bundle::Source;

macro_rules! embed {
    ($stem:literal) => {
        Source::Embedded {
            name: concat!("bundled models/tiny16/", $stem, ".safetensors"),
            weights: include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../models/tiny16/",
                $stem,
                ".safetensors"
            )),
            json: include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../models/tiny16/",
                $stem,
                ".json"
            )),
        }
    };
}

/// The autoencoder.
pub const VAE: Source = embed!("vae");

/// The text-to-image base.
pub const BASE: Source = embed!("base");

/// The layer model (decomposition, matting, removal, completion; `zlayer train layers`).
pub const LAYERS: Source = embed!("layers/omni");

/// The layer model's alpha-aware VAE.
pub const LAYER_VAE: Source = embed!("layers/vae");

/// The latent compositor (DecFormer) for the VAE's latents.
pub const PELC: Source = embed!("pelc");

/// The trained layout branch of a variant, when the bundle has one.
pub fn layout(variant: &str) -> Option<Source> {
    Some(match variant {
        "occlusionformer" => embed!("layout"),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_bundled_file_is_the_one_on_disk() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny16");
        let mut variants: Vec<String> = match std::fs::read_dir(root.join("variants")) {
            Ok(dir) => dir
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        };
        variants.sort();
        for v in variants
            .iter()
            .map(String::as_str)
            .chain(["occlusionformer"])
        {
            let Some(super::Source::Embedded { weights, .. }) = super::layout(v) else {
                panic!("variant {v} on disk but not bundled");
            };
            let path = match v {
                "occlusionformer" => root.join("layout.safetensors"),
                _ => root.join("variants").join(v).join("layout.safetensors"),
            };
            assert_eq!(weights, std::fs::read(path).unwrap().as_slice(), "{v}");
        }
        assert!(super::layout("unicorn").is_none());
        for (src, stem) in [
            (super::LAYERS, "layers/omni"),
            (super::LAYER_VAE, "layers/vae"),
            (super::VAE, "vae"),
            (super::BASE, "base"),
            (super::PELC, "pelc"),
        ] {
            let super::Source::Embedded { weights, json, .. } = src else {
                panic!("{stem} is not embedded");
            };
            let path = root.join(stem);
            assert_eq!(
                weights,
                std::fs::read(path.with_extension("safetensors")).unwrap()
            );
            assert_eq!(
                json,
                std::fs::read_to_string(path.with_extension("json")).unwrap()
            );
        }
    }

    #[test]
    fn the_bundled_layer_model_loads_with_its_alpha_vae() {
        let dev = candle_core::Device::Cpu;
        let name = std::path::Path::new(crate::decompose::DEFAULT_LAYER_MODEL);
        let (lm, meta) = crate::decompose::LayerModel::open(name, &dev).unwrap();
        assert_eq!((lm.size, lm.vae.cfg.image_channels), (meta.image_size, 4));
        assert_eq!(lm.words.len(), meta.words.len());
    }
}
