//! The simulated instruction writer's mind: a feasible edit of a subcategory for a scene, and
//! distinct extra changes for the hard negatives.

use crate::edit::Edit;
use crate::rng::Rng;
use crate::scene::{Color, Kind, Material, Pose, Scene, Shape, Style, Texture, TimeOfDay, Weather};

/// Labels an extra change can have (object-level and global; never the base edit's own label).
const EXTRA_LABELS: &[&str] = &[
    "color", "material", "texture", "shape", "addition", "time", "weather", "style",
];

fn other<T: Copy + PartialEq>(rng: &mut Rng, all: &[T], current: T) -> T {
    let choices: Vec<T> = all.iter().copied().filter(|v| *v != current).collect();
    *rng.pick(&choices)
}

/// One edit of the subcategory with this label, or why the scene does not allow one.
///
/// # Errors
/// A reason when the scene has nothing to edit this way (nothing to remove, no person, ...).
pub fn propose(scene: &Scene, label: &str, rng: &mut Rng) -> Result<Vec<Edit>, String> {
    if label == "complex" {
        let simple = [
            "color", "material", "texture", "addition", "remove", "time", "weather", "style",
        ];
        let first_label = *rng.pick(&simple);
        let first = propose_simple(scene, first_label, rng)?;
        let mut after = scene.clone();
        first.apply(&mut after).map_err(|e| e.to_string())?;
        let rest: Vec<&str> = simple
            .iter()
            .copied()
            .filter(|l| *l != first_label)
            .collect();
        for _ in 0..8 {
            let label = *rng.pick(&rest);
            if let Ok(second) = propose_simple(&after, label, rng)
                && second.target().is_none_or(|t| Some(t) != first.target())
            {
                return Ok(vec![first, second]);
            }
        }
        return Err("no second edit fits this image".to_string());
    }
    propose_simple(scene, label, rng).map(|e| vec![e])
}

fn pick_object(scene: &Scene, rng: &mut Rng) -> Result<(u32, String), String> {
    if scene.objects.is_empty() {
        return Err("there is no object in the image".to_string());
    }
    let object = &scene.objects[rng.below(scene.objects.len())];
    Ok((object.id, scene.describe(object.id)))
}

/// A simple (non-complex) edit.
///
/// # Errors
/// A reason when infeasible.
pub fn propose_simple(scene: &Scene, label: &str, rng: &mut Rng) -> Result<Edit, String> {
    let edit = match label {
        "color" => {
            let (id, target) = pick_object(scene, rng)?;
            let current = scene.object(id).map_or(Color::Red, |o| o.color);
            Edit::Color {
                target,
                to: other(rng, Color::ALL, current),
            }
        }
        "material" => {
            let (id, target) = pick_object(scene, rng)?;
            let current = scene.object(id).map_or(Material::Matte, |o| o.material);
            Edit::Material {
                target,
                to: other(rng, Material::ALL, current),
            }
        }
        "shape" => {
            let (id, target) = pick_object(scene, rng)?;
            let current = scene.object(id).map_or(Shape::Round, |o| o.shape);
            Edit::Shape {
                target,
                to: other(rng, Shape::ALL, current),
            }
        }
        "texture" => {
            let (id, target) = pick_object(scene, rng)?;
            let current = scene.object(id).map_or(Texture::Plain, |o| o.texture);
            Edit::Texture {
                target,
                to: other(rng, Texture::ALL, current),
            }
        }
        "addition" => {
            let anchor = scene
                .free_anchor()
                .ok_or("there is no free space to add an object")?;
            Edit::Add {
                color: *rng.pick(Color::ALL),
                kind: *rng.pick(Kind::ALL),
                anchor,
            }
        }
        "remove" => {
            if scene.objects.len() < 2 {
                return Err("removing the only object would leave an empty image".to_string());
            }
            let (_, target) = pick_object(scene, rng)?;
            Edit::Remove { target }
        }
        "replace" => {
            let (id, target) = pick_object(scene, rng)?;
            let current = scene.object(id).map_or(Kind::Ball, |o| o.kind);
            Edit::Replace {
                target,
                kind: other(rng, Kind::ALL, current),
            }
        }
        "count" => {
            if scene.objects.is_empty() {
                return Err("there is nothing to count".to_string());
            }
            let kind = scene.objects[rng.below(scene.objects.len())].kind;
            let from = scene.count(kind);
            let can_add = scene.free_anchor().is_some() && from < 5;
            let to = if from > 1 && (!can_add || rng.chance(0.5)) {
                from - 1
            } else if can_add {
                from + 1
            } else {
                return Err(format!("the {} cannot be counted up or down", kind.word()));
            };
            Edit::Count { kind, from, to }
        }
        "spatial" => {
            let (_, target) = pick_object(scene, rng)?;
            let anchor = scene
                .free_anchor()
                .ok_or("there is no free place to move an object to")?;
            Edit::Move { target, anchor }
        }
        "action" => {
            let figure = scene
                .figure
                .as_ref()
                .ok_or("there is no person in the image")?;
            Edit::Pose {
                to: other(rng, Pose::ALL, figure.pose),
            }
        }
        "viewpoint" => {
            if rng.chance(0.5) {
                Edit::Mirror
            } else {
                Edit::Zoom {
                    zoom_in: (scene.zoom - 1.0).abs() < f32::EPSILON,
                }
            }
        }
        "style" => Edit::Style {
            to: other(rng, Style::ALL, scene.style),
        },
        "time" => Edit::Time {
            to: other(rng, TimeOfDay::ALL, scene.time),
        },
        "weather" => Edit::Weather {
            to: other(rng, Weather::ALL, scene.weather),
        },
        other => return Err(format!("unknown edit type `{other}`")),
    };
    Ok(edit)
}

/// Up to `count` extra changes for hard negatives, distinct from each other and from the base
/// edits, never touching what the base edits touch. Each is valid on the scene after the base.
pub fn extras(
    before: &Scene,
    after_base: &Scene,
    base: &[Edit],
    count: usize,
    rng: &mut Rng,
) -> Vec<Edit> {
    let base_labels: Vec<&str> = base.iter().map(Edit::label).collect();
    // Objects the base edit touched (changed, added or removed) stay as the base left them.
    let touched: Vec<u32> = before
        .objects
        .iter()
        .filter(|o| after_base.object(o.id) != Some(*o))
        .map(|o| o.id)
        .chain(
            after_base
                .objects
                .iter()
                .filter(|o| before.object(o.id).is_none())
                .map(|o| o.id),
        )
        .collect();
    let mut chosen: Vec<Edit> = Vec::new();
    let mut attempts = 0;
    while chosen.len() < count && attempts < count * 12 {
        attempts += 1;
        let label = *rng.pick(EXTRA_LABELS);
        let global = matches!(label, "time" | "weather" | "style");
        if global && (base_labels.contains(&label) || chosen.iter().any(|e| e.label() == label)) {
            continue;
        }
        let Ok(edit) = propose_simple(after_base, label, rng) else {
            continue;
        };
        if let Some(target) = edit.target()
            && after_base
                .resolve(target)
                .is_some_and(|id| touched.contains(&id))
        {
            continue;
        }
        if let Edit::Add { anchor, .. } = &edit
            && chosen
                .iter()
                .any(|c| matches!(c, Edit::Add { anchor: a, .. } if a == anchor))
        {
            continue;
        }
        if chosen.iter().any(|c| c.sentence() == edit.sentence()) {
            continue;
        }
        chosen.push(edit);
    }
    chosen
}
