//! The procedural world: a scene is a background, a few objects, maybe a person, and global
//! conditions (time of day, weather, drawing style, view). Each image the simulator makes
//! carries its scene in the file, so the simulated models can "see" it.
//!
//! Invariant: rendering is a pure function of the scene, so two images differ exactly where
//! their scenes differ.

use serde::{Deserialize, Serialize};

use crate::rng::Rng;

macro_rules! vocabulary {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $word:literal),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $(#[doc = $word] $variant),* }

        impl $name {
            /// Every value.
            pub const ALL: &[Self] = &[$(Self::$variant),*];

            /// The word used in instructions and queries.
            #[must_use]
            pub fn word(self) -> &'static str {
                match self { $(Self::$variant => $word),* }
            }

            /// Parses the word.
            #[must_use]
            pub fn from_word(word: &str) -> Option<Self> {
                match word { $($word => Some(Self::$variant),)* _ => None }
            }
        }
    };
}

vocabulary! {
    /// Object colours.
    Color { Red = "red", Orange = "orange", Yellow = "yellow", Green = "green", Blue = "blue", Purple = "purple", Pink = "pink", White = "white", Black = "black", Brown = "brown" }
}
vocabulary! {
    /// What an object is (drawn as an outline plus an emblem).
    Kind { Ball = "ball", Box = "box", Cup = "cup", Tree = "tree", Car = "car", House = "house", Lamp = "lamp", Book = "book" }
}
vocabulary! {
    /// Outline.
    Shape { Round = "round", Square = "square", Triangular = "triangular", Diamond = "diamond-shaped" }
}
vocabulary! {
    /// Surface material.
    Material { Matte = "plastic", Metal = "metal", Glass = "glass", Wood = "wood" }
}
vocabulary! {
    /// Surface pattern.
    Texture { Plain = "plain", Striped = "striped", Dotted = "dotted", Checkered = "checkered" }
}
vocabulary! {
    /// The person's pose.
    Pose { Standing = "standing", Sitting = "sitting", ArmsUp = "raising both arms", Running = "running" }
}
vocabulary! {
    /// Time of day.
    TimeOfDay { Day = "daytime", Sunset = "sunset", Night = "night" }
}
vocabulary! {
    /// Weather.
    Weather { Clear = "clear", Rain = "rainy", Snow = "snowy", Fog = "foggy" }
}
vocabulary! {
    /// Drawing style.
    Style { Photo = "photo", Sketch = "pencil sketch", Cartoon = "cartoon", Watercolor = "watercolour painting" }
}
vocabulary! {
    /// Background.
    Background { Meadow = "meadow", Beach = "beach", Street = "street", Room = "room" }
}

/// An object in the scene.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Object {
    /// Stable id within the scene.
    pub id: u32,
    /// What it is.
    pub kind: Kind,
    /// Colour.
    pub color: Color,
    /// Outline.
    pub shape: Shape,
    /// Material.
    pub material: Material,
    /// Pattern.
    pub texture: Texture,
    /// Centre, as fractions of width and height.
    pub x: f32,
    /// Centre, as fractions of width and height.
    pub y: f32,
    /// Half the side, as a fraction of the shorter image side.
    pub size: f32,
}

/// The person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// Centre x (fraction).
    pub x: f32,
    /// Feet y (fraction).
    pub y: f32,
    /// Pose.
    pub pose: Pose,
    /// Shirt colour.
    pub color: Color,
}

/// A whole scene.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Background.
    pub background: Background,
    /// Objects, in drawing order.
    pub objects: Vec<Object>,
    /// The person, if any.
    pub figure: Option<Figure>,
    /// Time of day.
    pub time: TimeOfDay,
    /// Weather.
    pub weather: Weather,
    /// Style.
    pub style: Style,
    /// Mirrored left to right.
    pub mirrored: bool,
    /// Zoom factor about the centre (1 = whole scene).
    pub zoom: f32,
    /// Next object id.
    pub next_id: u32,
}

/// Grid of anchor positions used for placing objects (fractions of width and height).
pub const ANCHORS: &[(&str, f32, f32)] = &[
    ("at the top left", 0.2, 0.25),
    ("at the top", 0.5, 0.22),
    ("at the top right", 0.8, 0.25),
    ("on the left", 0.18, 0.55),
    ("in the middle", 0.5, 0.55),
    ("on the right", 0.82, 0.55),
    ("at the bottom left", 0.22, 0.82),
    ("at the bottom", 0.5, 0.84),
    ("at the bottom right", 0.78, 0.82),
];

impl Kind {
    /// The outline an object of this kind has by default.
    #[must_use]
    pub fn default_shape(self) -> Shape {
        match self {
            Self::Ball | Self::Lamp => Shape::Round,
            Self::Box | Self::Book | Self::Car => Shape::Square,
            Self::Tree | Self::House => Shape::Triangular,
            Self::Cup => Shape::Diamond,
        }
    }

    /// Plural word.
    #[must_use]
    pub fn plural(self) -> String {
        match self {
            Self::Box => "boxes".to_string(),
            other => format!("{}s", other.word()),
        }
    }
}

impl Scene {
    /// A random scene of `width` x `height` pixels.
    #[must_use]
    #[expect(clippy::cast_possible_truncation, reason = "small fractions")]
    pub fn random(rng: &mut Rng, width: u32, height: u32) -> Self {
        let mut scene = Self {
            width,
            height,
            background: *rng.pick(Background::ALL),
            objects: Vec::new(),
            figure: None,
            time: TimeOfDay::Day,
            weather: Weather::Clear,
            style: Style::Photo,
            mirrored: false,
            zoom: 1.0,
            next_id: 0,
        };
        // Mostly plain photos, sometimes already at night or in rain (so `time` and `weather`
        // edits have somewhere to go either way).
        if rng.chance(0.2) {
            scene.time = *rng.pick(&TimeOfDay::ALL[1..]);
        }
        if rng.chance(0.2) {
            scene.weather = *rng.pick(&Weather::ALL[1..]);
        }
        let count = 2 + rng.below(3);
        let mut free: Vec<usize> = (0..ANCHORS.len()).collect();
        for _ in 0..count {
            let slot = free.remove(rng.below(free.len()));
            let (_, ax, ay) = ANCHORS[slot];
            let kind = *rng.pick(Kind::ALL);
            let object = Object {
                id: scene.next_id,
                kind,
                color: *rng.pick(Color::ALL),
                shape: kind.default_shape(),
                material: if rng.chance(0.6) {
                    Material::Matte
                } else {
                    *rng.pick(Material::ALL)
                },
                texture: if rng.chance(0.6) {
                    Texture::Plain
                } else {
                    *rng.pick(Texture::ALL)
                },
                x: ax + rng.range(-0.04, 0.04) as f32,
                y: ay + rng.range(-0.03, 0.03) as f32,
                size: rng.range(0.07, 0.11) as f32,
            };
            scene.next_id += 1;
            scene.objects.push(object);
        }
        // Sometimes a second object of the same kind, so `count` edits are natural.
        if rng.chance(0.5) && !free.is_empty() {
            let template = scene.objects[rng.below(scene.objects.len())].clone();
            let slot = free.remove(rng.below(free.len()));
            let (_, ax, ay) = ANCHORS[slot];
            scene.objects.push(Object {
                id: scene.next_id,
                x: ax,
                y: ay,
                ..template
            });
            scene.next_id += 1;
        }
        if rng.chance(0.5) && !free.is_empty() {
            let slot = free.remove(rng.below(free.len()));
            let (_, ax, ay) = ANCHORS[slot];
            scene.figure = Some(Figure {
                x: ax,
                y: (ay + 0.12).min(0.95),
                pose: *rng.pick(Pose::ALL),
                color: *rng.pick(Color::ALL),
            });
        }
        scene
    }

    /// The object with this id.
    #[must_use]
    pub fn object(&self, id: u32) -> Option<&Object> {
        self.objects.iter().find(|o| o.id == id)
    }

    /// How many objects are of `kind`.
    #[must_use]
    pub fn count(&self, kind: Kind) -> usize {
        self.objects.iter().filter(|o| o.kind == kind).count()
    }

    /// A description that picks out exactly this object: "yellow ball", "yellow ball on the left".
    #[must_use]
    pub fn describe(&self, id: u32) -> String {
        let Some(object) = self.object(id) else {
            return String::from("object");
        };
        let base = format!("{} {}", object.color.word(), object.kind.word());
        let same: Vec<&Object> = self
            .objects
            .iter()
            .filter(|o| o.kind == object.kind && o.color == object.color)
            .collect();
        if same.len() == 1 {
            return base;
        }
        format!("{base} {}", nearest_anchor(object.x, object.y))
    }

    /// Resolves a description made by [`Scene::describe`] (or without its position part).
    #[must_use]
    pub fn resolve(&self, description: &str) -> Option<u32> {
        let description = description.trim();
        if let Some(o) = self
            .objects
            .iter()
            .find(|o| self.describe(o.id) == description)
        {
            return Some(o.id);
        }
        let matches: Vec<&Object> = self
            .objects
            .iter()
            .filter(|o| format!("{} {}", o.color.word(), o.kind.word()) == description)
            .collect();
        (matches.len() == 1).then(|| matches[0].id)
    }

    /// A free anchor for a new object, if any (deterministic).
    #[must_use]
    pub fn free_anchor(&self) -> Option<usize> {
        (0..ANCHORS.len()).find(|&i| {
            let (_, ax, ay) = ANCHORS[i];
            let near = |x: f32, y: f32| (x - ax).abs() < 0.15 && (y - ay).abs() < 0.15;
            !self.objects.iter().any(|o| near(o.x, o.y))
                && !self.figure.as_ref().is_some_and(|f| near(f.x, f.y - 0.12))
        })
    }
}

/// The anchor phrase nearest to a position.
#[must_use]
pub fn nearest_anchor(x: f32, y: f32) -> &'static str {
    ANCHORS
        .iter()
        .min_by(|a, b| {
            let da = (a.1 - x).powi(2) + (a.2 - y).powi(2);
            let db = (b.1 - x).powi(2) + (b.2 - y).powi(2);
            da.total_cmp(&db)
        })
        .map_or("in the middle", |a| a.0)
}
