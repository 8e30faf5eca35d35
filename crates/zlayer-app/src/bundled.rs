//! The bundled tiny model (`models/tiny`), built into the binary so that an installed or
//! copied `zlayer` and a server started anywhere find their default model.
//!
//! About 14 MB of f16 weights: the VAE, the base, the OcclusionFormer branch, the trained
//! baselines and ablations under `variants/`, and the layer model with its alpha-aware VAE
//! under `layers/`. Cargo rebuilds when any of these files change.

use zlayer_model::bundle::Source;

macro_rules! embed {
    ($stem:literal) => {
        Source::Embedded {
            name: concat!("bundled models/tiny/", $stem, ".safetensors"),
            weights: include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../models/tiny/",
                $stem,
                ".safetensors"
            )),
            json: include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../models/tiny/",
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

/// The trained layout branch of a variant, when the bundle has one.
pub fn layout(variant: &str) -> Option<Source> {
    Some(match variant {
        "occlusionformer" => embed!("layout"),
        "global" => embed!("variants/global/layout"),
        "global-rank" => embed!("variants/global-rank/layout"),
        "static-sigma" => embed!("variants/static-sigma/layout"),
        "no-align" => embed!("variants/no-align/layout"),
        "attn-map-loss" => embed!("variants/attn-map-loss/layout"),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_bundled_file_is_the_one_on_disk() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny");
        let mut variants: Vec<String> = std::fs::read_dir(root.join("variants"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
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
        for (src, stem) in [(super::LAYERS, "omni"), (super::LAYER_VAE, "vae")] {
            let super::Source::Embedded { weights, json, .. } = src else {
                panic!("layers/{stem} is not embedded");
            };
            let path = root.join("layers").join(stem);
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
