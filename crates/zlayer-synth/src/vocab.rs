//! The closed vocabulary of the synthetic world: colours, shapes, patterns, materials and
//! backgrounds. One source for the renderer, the caption grammar, the text encoder's
//! tokenizer and error messages (exported as JSON by `zlayer synth --vocab`).
//!
//! Captions follow one grammar: `<colour> [<pattern>] [glass] <shape>`, e.g. "red sphere",
//! "blue striped cube", "green checkered glass disk". `solid` and `opaque` are the defaults
//! and are not written.

use serde::Serialize;

/// Generates an enum with a name table and a lookup.
macro_rules! word_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vm])* $v),+ }
        impl $name {
            /// Every value, in vocabulary order.
            pub const ALL: &'static [$name] = &[$($name::$v),+];
            /// The word used in captions.
            pub fn name(self) -> &'static str {
                match self { $($name::$v => $s),+ }
            }
            /// The value for a caption word.
            pub fn from_name(s: &str) -> Option<Self> {
                match s { $($s => Some($name::$v),)+ _ => None }
            }
        }
    };
}

word_enum! {
    /// Named colours, far apart in hue and lightness, so identity is recoverable from colour.
    Colour {
        /// Red.
        Red = "red",
        /// Orange.
        Orange = "orange",
        /// Yellow.
        Yellow = "yellow",
        /// Green.
        Green = "green",
        /// Cyan.
        Cyan = "cyan",
        /// Blue.
        Blue = "blue",
        /// Purple.
        Purple = "purple",
        /// Pink.
        Pink = "pink",
        /// Brown.
        Brown = "brown",
        /// Black.
        Black = "black",
        /// White.
        White = "white",
    }
}

word_enum! {
    /// Shapes, each drawn anti-aliased inside its amodal box.
    Shape {
        /// A filled ellipse.
        Disk = "disk",
        /// A filled rectangle.
        Square = "square",
        /// An upward triangle.
        Triangle = "triangle",
        /// A five-pointed star.
        Star = "star",
        /// An annulus; the background shows through its hole.
        Ring = "ring",
        /// A disk with radial shading and a highlight.
        Sphere = "sphere",
        /// An isometric cube with three shaded faces.
        Cube = "cube",
        /// An upright cylinder with a lit top ellipse.
        Cylinder = "cylinder",
        /// A thin bar along the box's long axis.
        Stick = "stick",
        /// A plus sign.
        Cross = "cross",
    }
}

word_enum! {
    /// Surface patterns; every tone stays within the instance's colour.
    Pattern {
        /// One tone.
        Solid = "solid",
        /// Diagonal stripes of a darker tone.
        Striped = "striped",
        /// A checkerboard of a darker tone.
        Checkered = "checkered",
        /// Lighter dots.
        Dotted = "dotted",
    }
}

word_enum! {
    /// How much of what is behind shows through.
    Material {
        /// Alpha 1.
        Opaque = "opaque",
        /// Translucent, alpha 0.3–0.7.
        Glass = "glass",
    }
}

word_enum! {
    /// Backgrounds, in muted tones that no instance colour is close to.
    Background {
        /// One muted tone.
        Plain = "plain",
        /// A pale vertical gradient.
        Sky = "sky",
        /// A wall above a floor.
        FloorWall = "floor and wall",
        /// Large grey checks.
        Checker = "checker",
        /// Smooth grey value noise.
        Noise = "noise",
    }
}

impl Colour {
    /// The sRGB value, 0–255.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [200, 25, 35],
            Colour::Orange => [240, 125, 15],
            Colour::Yellow => [245, 225, 40],
            Colour::Green => [35, 160, 55],
            Colour::Cyan => [30, 200, 215],
            Colour::Blue => [35, 65, 215],
            Colour::Purple => [125, 45, 185],
            Colour::Pink => [245, 120, 195],
            Colour::Brown => [115, 65, 25],
            Colour::Black => [25, 25, 25],
            Colour::White => [245, 245, 245],
        }
    }
}

/// A caption parsed into vocabulary words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Look {
    /// Colour.
    pub colour: Colour,
    /// Shape.
    pub shape: Shape,
    /// Pattern.
    pub pattern: Pattern,
    /// Material.
    pub material: Material,
}

/// A caption word outside the vocabulary, or words in the wrong order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{message}; captions are \"<colour> [<pattern>] [glass] <shape>\", e.g. \"red striped sphere\" (see `zlayer synth --vocab`)"
)]
pub struct CaptionError {
    /// What is wrong.
    pub message: String,
}

impl Look {
    /// The caption, e.g. "blue striped glass cube".
    pub fn caption(&self) -> String {
        let mut words = vec![self.colour.name()];
        if self.pattern != Pattern::Solid {
            words.push(self.pattern.name());
        }
        if self.material == Material::Glass {
            words.push("glass");
        }
        words.push(self.shape.name());
        words.join(" ")
    }

    /// Parses a caption of the grammar `<colour> [<pattern>] [glass] <shape>`.
    pub fn parse(caption: &str) -> Result<Look, CaptionError> {
        let words: Vec<&str> = caption.split_whitespace().collect();
        let err = |m: String| CaptionError { message: m };
        let (&first, rest) = words
            .split_first()
            .ok_or_else(|| err("empty caption".into()))?;
        let colour = Colour::from_name(first).ok_or_else(|| {
            err(format!(
                "{first:?} is not a colour (known: {})",
                names(Colour::ALL.iter().map(|c| c.name()))
            ))
        })?;
        let (&last, middle) = rest
            .split_last()
            .ok_or_else(|| err(format!("{caption:?} has no shape")))?;
        let shape = Shape::from_name(last).ok_or_else(|| {
            err(format!(
                "{last:?} is not a shape (known: {})",
                names(Shape::ALL.iter().map(|s| s.name()))
            ))
        })?;
        let mut look = Look {
            colour,
            shape,
            pattern: Pattern::Solid,
            material: Material::Opaque,
        };
        let mut k = 0;
        if let Some(p) = middle.first().and_then(|w| Pattern::from_name(w)) {
            look.pattern = p;
            k = 1;
        }
        if middle.get(k) == Some(&"glass") {
            look.material = Material::Glass;
            k += 1;
        }
        if let Some(w) = middle.get(k) {
            return Err(err(format!("unexpected word {w:?} in {caption:?}")));
        }
        Ok(look)
    }
}

/// Everyday words for the world's colours and shapes ("ball" is drawn as a sphere). Only
/// words whose meaning the drawing keeps; "grey" has no colour here and is dropped.
const SYNONYMS: &[(&str, &str)] = &[
    ("ball", "sphere"),
    ("globe", "sphere"),
    ("orb", "sphere"),
    ("circle", "disk"),
    ("disc", "disk"),
    ("plate", "disk"),
    ("box", "cube"),
    ("block", "cube"),
    ("dice", "cube"),
    ("rectangle", "square"),
    ("can", "cylinder"),
    ("tube", "cylinder"),
    ("pillar", "cylinder"),
    ("donut", "ring"),
    ("doughnut", "ring"),
    ("rod", "stick"),
    ("pole", "stick"),
    ("bar", "stick"),
    ("branch", "stick"),
    ("plus", "cross"),
    ("violet", "purple"),
    ("magenta", "pink"),
    ("gold", "yellow"),
    ("golden", "yellow"),
    ("teal", "cyan"),
    ("turquoise", "cyan"),
    ("navy", "blue"),
    ("transparent", "glass"),
    ("translucent", "glass"),
    ("stripes", "striped"),
    ("checked", "checkered"),
    ("spotted", "dotted"),
];

/// A free-form caption fitted to the world's grammar (see [`Look::fit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fitted {
    /// What is drawn.
    pub look: Look,
    /// The caption's words that were kept (as written, lower case), in caption order.
    pub kept: Vec<String>,
    /// The caption has no colour word; the colour was chosen.
    pub chose_colour: bool,
    /// The caption has no shape word; the shape is the neutral [`Look::NEUTRAL_SHAPE`].
    pub chose_shape: bool,
}

impl Fitted {
    /// Whether the caption was already a caption of the grammar.
    pub fn exact(&self, caption: &str) -> bool {
        caption.split_whitespace().collect::<Vec<_>>().join(" ") == self.look.caption()
    }
}

impl Look {
    /// The shape of an object whose caption names none.
    pub const NEUTRAL_SHAPE: Shape = Shape::Disk;

    /// Fits any caption to the grammar: words of the vocabulary (or an everyday synonym, e.g.
    /// "ball" → sphere) are kept, the last of each kind wins, and the rest are dropped. A
    /// caption with no colour takes the first colour not in `taken` (so objects stay
    /// distinguishable), one with no shape the neutral disk.
    pub fn fit(caption: &str, taken: &[Colour]) -> Fitted {
        let (mut colour, mut shape, mut pattern, mut material) = (None, None, None, None);
        let mut kept = Vec::new();
        for raw in caption.split(|c: char| !c.is_alphanumeric() && c != '-') {
            let lower = raw.to_lowercase();
            let w = SYNONYMS
                .iter()
                .find(|(from, _)| *from == lower)
                .map_or(lower.as_str(), |(_, to)| to);
            let hit = if let Some(c) = Colour::from_name(w) {
                colour = Some(c);
                true
            } else if let Some(s) = Shape::from_name(w) {
                shape = Some(s);
                true
            } else if let Some(p) = Pattern::from_name(w) {
                pattern = Some(p);
                true
            } else if let Some(m) = Material::from_name(w) {
                material = Some(m);
                true
            } else {
                false
            };
            if hit {
                kept.push(lower.clone());
            }
        }
        let free = || {
            Colour::ALL
                .iter()
                .copied()
                .find(|c| !taken.contains(c))
                .unwrap_or(Colour::ALL[taken.len() % Colour::ALL.len()])
        };
        Fitted {
            look: Look {
                colour: colour.unwrap_or_else(free),
                shape: shape.unwrap_or(Self::NEUTRAL_SHAPE),
                pattern: pattern.unwrap_or(Pattern::Solid),
                material: material.unwrap_or(Material::Opaque),
            },
            kept,
            chose_colour: colour.is_none(),
            chose_shape: shape.is_none(),
        }
    }
}

fn names<'a>(it: impl Iterator<Item = &'a str>) -> String {
    it.collect::<Vec<_>>().join(", ")
}

/// The vocabulary as JSON-ready data.
#[derive(Debug, Serialize)]
pub struct Vocabulary {
    /// Colour names with their sRGB values.
    pub colours: Vec<(&'static str, [u8; 3])>,
    /// Shape names.
    pub shapes: Vec<&'static str>,
    /// Pattern names (`solid` is not written in captions).
    pub patterns: Vec<&'static str>,
    /// Material names (`opaque` is not written in captions).
    pub materials: Vec<&'static str>,
    /// Background names.
    pub backgrounds: Vec<&'static str>,
    /// The caption grammar.
    pub grammar: &'static str,
    /// The other words the prompt template uses.
    pub prompt_words: Vec<&'static str>,
}

/// The whole vocabulary.
pub fn vocabulary() -> Vocabulary {
    Vocabulary {
        colours: Colour::ALL.iter().map(|c| (c.name(), c.rgb())).collect(),
        shapes: Shape::ALL.iter().map(|s| s.name()).collect(),
        patterns: Pattern::ALL.iter().map(|p| p.name()).collect(),
        materials: Material::ALL.iter().map(|m| m.name()).collect(),
        backgrounds: Background::ALL.iter().map(|b| b.name()).collect(),
        grammar: "<colour> [<pattern>] [glass] <shape>",
        prompt_words: crate::sample::PROMPT_WORDS.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_caption_fits_the_grammar() {
        let fit = |c: &str| Look::fit(c, &[]);
        let cat = fit("black cat");
        assert_eq!(cat.look.caption(), "black disk");
        assert_eq!(cat.kept, ["black"]);
        assert!(!cat.chose_colour && cat.chose_shape && !cat.exact("black cat"));
        assert_eq!(fit("A Red Ball.").look.caption(), "red sphere");
        assert_eq!(fit("grey cat").look.caption(), "red disk");
        assert_eq!(
            fit("a transparent, striped blue box").look.caption(),
            "blue striped glass cube"
        );
        let taken = [Colour::Red, Colour::Orange];
        let branch = Look::fit("branch", &taken);
        assert_eq!(branch.look.caption(), "yellow stick");
        assert_eq!(branch.kept, ["branch"]);
        assert!(branch.chose_colour && !branch.chose_shape);
        let nothing = Look::fit("", &taken);
        assert_eq!(nothing.look.caption(), "yellow disk");
        assert!(nothing.kept.is_empty());
        // When every colour is taken, colours repeat in turn rather than fail.
        assert_eq!(Look::fit("cat", Colour::ALL).look.colour, Colour::Red);
    }

    #[test]
    fn every_look_round_trips_through_its_caption() {
        for &colour in Colour::ALL {
            for &shape in Shape::ALL {
                for &pattern in Pattern::ALL {
                    for &material in Material::ALL {
                        let look = Look {
                            colour,
                            shape,
                            pattern,
                            material,
                        };
                        assert_eq!(Look::parse(&look.caption()), Ok(look));
                        // It also fits to itself, whatever colours are taken.
                        let f = Look::fit(&look.caption(), Colour::ALL);
                        assert_eq!(f.look, look);
                        assert!(f.exact(&look.caption()));
                    }
                }
            }
        }
    }

    #[test]
    fn unknown_words_are_named_with_the_vocabulary() {
        let e = Look::parse("teal sphere").unwrap_err().to_string();
        assert!(
            e.contains("\"teal\" is not a colour") && e.contains("red, orange"),
            "{e}"
        );
        let e = Look::parse("red dog").unwrap_err().to_string();
        assert!(e.contains("\"dog\" is not a shape"), "{e}");
        assert!(
            Look::parse("red glass striped cube").is_err(),
            "order is fixed"
        );
        assert!(Look::parse("red").is_err());
    }

    #[test]
    fn colours_are_far_apart() {
        for (i, a) in Colour::ALL.iter().enumerate() {
            for b in &Colour::ALL[i + 1..] {
                let (x, y) = (a.rgb(), b.rgb());
                let d: f32 = (0..3)
                    .map(|k| (x[k] as f32 - y[k] as f32).powi(2))
                    .sum::<f32>()
                    .sqrt();
                assert!(d > 90.0, "{a:?} and {b:?} are only {d:.0} apart");
            }
        }
    }
}
