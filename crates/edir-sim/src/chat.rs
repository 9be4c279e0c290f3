//! The simulated chat models, chosen by the reply schema's name (`response_format.json_schema.name`,
//! or the schema's `title` for vLLM's `structured_outputs`):
//!
//! | schema name | model | sees |
//! |---|---|---|
//! | `edit_instruction` | instruction writer | the reference's scene, `Edit type: LABEL`, `write N extra changes` |
//! | `retrieval_query` | query writer | the line `The change ...: INSTRUCTION` |
//! | `edit_verdict` | edit judge | reference and target scenes, the line `Instruction: ...` |
//! | `query_verdict` | query judge | reference, target and negative scenes, the line `Query: ...` |
//!
//! Any other schema gets a minimal instance of itself; no schema gets a short text reply.

use serde_json::{Value, json};

use crate::edit::{self, Edit, apply_instruction};
use crate::generic;
use crate::phrase;
use crate::propose;
use crate::rng::Rng;
use crate::scene::Scene;

/// An image in a request, decoded as far as the simulated models need.
#[derive(Debug, Clone)]
pub struct SeenImage {
    /// The scene, when the image carries one.
    pub scene: Option<Scene>,
    /// A fingerprint of the bytes (for generic comparisons).
    pub digest: [u8; 32],
}

/// What the simulated model got.
#[derive(Debug)]
pub struct ChatInput<'a> {
    /// All text of all messages, in order.
    pub text: &'a str,
    /// Images in order.
    pub images: &'a [SeenImage],
    /// Schema name, if any.
    pub schema_name: Option<&'a str>,
    /// The schema, if any.
    pub schema: Option<&'a Value>,
    /// Seed for the reply.
    pub seed: u64,
}

/// The reply's content.
#[must_use]
pub fn reply(input: &ChatInput<'_>) -> String {
    let mut rng = Rng::from_parts(&[
        input.seed,
        u64::from(blake3::hash(input.text.as_bytes()).as_bytes()[0]),
    ]);
    let value = match input.schema_name {
        Some("edit_instruction") => instruction(input, &mut rng),
        Some("retrieval_query") => query(input, &mut rng),
        Some("edit_verdict") => judge_edit(input),
        Some("query_verdict") => judge_query(input),
        Some(_) => minimal_instance(input.schema.unwrap_or(&Value::Null)),
        None => {
            return format!(
                "(simulated reply to a {}-character prompt)",
                input.text.len()
            );
        }
    };
    value.to_string()
}

/// The text after `marker` up to the end of its line.
fn line_after<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    let start = text.find(marker)? + marker.len();
    let rest = &text[start..];
    Some(rest.lines().next().unwrap_or("").trim())
}

fn instruction(input: &ChatInput<'_>, rng: &mut Rng) -> Value {
    let label = line_after(input.text, "Edit type:")
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("color")
        .to_string();
    let count = input
        .text
        .find(" extra changes")
        .and_then(|end| input.text[..end].split_whitespace().last())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(5);
    let infeasible = |reason: String| json!({"feasible": false, "subject": "", "edit": "", "visual_check": "", "extra_changes": [], "reason": reason});
    let Some(scene) = input.images.first().and_then(|i| i.scene.as_ref()) else {
        // A photo without a scene: a generic edit of the requested kind.
        let region = *rng.pick(&generic::REGIONS[..5]);
        let others: Vec<String> = generic::REGIONS
            .iter()
            .filter(|r| **r != region)
            .take(count)
            .enumerate()
            .map(|(i, r)| {
                let labels = ["color", "texture", "time", "weather", "style"];
                generic::sentence(labels[i % labels.len()], r)
            })
            .collect();
        return json!({"feasible": true, "subject": region, "edit": generic::sentence(&label, region), "visual_check": format!("the {region} changed"), "extra_changes": others, "reason": "generic edit of a photo without a scene"});
    };
    let edits = match propose::propose(scene, &label, rng) {
        Ok(edits) => edits,
        Err(reason) => return infeasible(reason),
    };
    let mut after = scene.clone();
    for e in &edits {
        if let Err(error) = e.apply(&mut after) {
            return infeasible(error.to_string());
        }
    }
    let extras = propose::extras(scene, &after, &edits, count, rng);
    let text: Vec<String> = edits.iter().map(Edit::sentence).collect();
    let subject = edits
        .iter()
        .find_map(Edit::target)
        .unwrap_or("the whole scene")
        .to_string();
    json!({
        "feasible": true,
        "subject": subject,
        "edit": text.join(" "),
        "visual_check": format!("the image shows: {}", text.join(" ")),
        "extra_changes": extras.iter().map(Edit::sentence).collect::<Vec<_>>(),
        "reason": format!("a {label} edit grounded in the objects of this image"),
    })
}

fn query(input: &ChatInput<'_>, rng: &mut Rng) -> Value {
    let instruction = line_after(input.text, "image editor):")
        .or_else(|| line_after(input.text, "The change:"))
        .unwrap_or("");
    // About one query in twelve comes out too vague; the query judge should reject it.
    if rng.chance(1.0 / 12.0) {
        return json!({"query": "Could it look a little different, please?"});
    }
    let edits: Result<Vec<Edit>, _> = edit::sentences(instruction)
        .iter()
        .map(|s| edit::parse(s))
        .collect();
    match edits {
        Ok(edits) if !edits.is_empty() => json!({"query": phrase::query(&edits, rng)}),
        _ => {
            let generic = generic::parse(instruction).map_or_else(
                || "with the requested change".to_string(),
                |(label, region)| format!("with a {label} change in the {region}"),
            );
            json!({"query": format!("Same photo {generic}.")})
        }
    }
}

fn verdict(accept: bool, reason: impl Into<String>) -> Value {
    json!({"verdict": if accept { "accept" } else { "reject" }, "reason": reason.into()})
}

fn judge_edit(input: &ChatInput<'_>) -> Value {
    let instruction = line_after(input.text, "Instruction:").unwrap_or("");
    let (Some(reference), Some(target)) = (input.images.first(), input.images.get(1)) else {
        return verdict(
            false,
            "two images are needed: the reference and the edited one",
        );
    };
    match (&reference.scene, &target.scene) {
        (Some(reference_scene), Some(target_scene)) => {
            match apply_instruction(reference_scene, instruction) {
                Ok(expected) if &expected == target_scene => {
                    let mut v = verdict(
                        true,
                        "the edited image shows the requested change and nothing else",
                    );
                    v["edit_visible"] = json!(true);
                    v["others_unchanged"] = json!(true);
                    v
                }
                Ok(expected) => {
                    let mut v = verdict(
                        false,
                        format!(
                            "the edited image differs from the request: {}",
                            describe_difference(&expected, target_scene)
                        ),
                    );
                    v["edit_visible"] = json!(target_scene != reference_scene);
                    v["others_unchanged"] = json!(false);
                    v
                }
                Err(error) => verdict(
                    false,
                    format!("the instruction does not fit the image: {error}"),
                ),
            }
        }
        _ => {
            if reference.digest == target.digest {
                verdict(false, "the edited image is identical to the reference")
            } else {
                verdict(
                    true,
                    "the image changed (generic photo, content not checked)",
                )
            }
        }
    }
}

fn describe_difference(expected: &Scene, actual: &Scene) -> String {
    for object in &expected.objects {
        match actual.object(object.id) {
            None => return format!("the {} is missing", expected.describe(object.id)),
            Some(found) if found != object => {
                return format!(
                    "the {} should be {} {} but is {} {}",
                    expected.describe(object.id),
                    object.color.word(),
                    object.kind.word(),
                    found.color.word(),
                    found.kind.word()
                );
            }
            Some(_) => {}
        }
    }
    if actual.objects.len() != expected.objects.len() {
        return format!(
            "{} objects instead of {}",
            actual.objects.len(),
            expected.objects.len()
        );
    }
    if actual.time != expected.time
        || actual.weather != expected.weather
        || actual.style != expected.style
    {
        return "the lighting, weather or style is not what was asked".to_string();
    }
    "the scene does not match the instruction".to_string()
}

fn judge_query(input: &ChatInput<'_>) -> Value {
    let query_text = line_after(input.text, "Query:").unwrap_or("");
    let (Some(reference), Some(target)) = (input.images.first(), input.images.get(1)) else {
        return verdict(false, "the reference and the target are needed");
    };
    let negatives = &input.images[2..];
    if negatives.iter().any(|n| n.digest == target.digest) {
        return verdict(false, "a near miss is identical to the target");
    }
    let (Some(reference_scene), Some(target_scene)) = (&reference.scene, &target.scene) else {
        let ok = query_text.split_whitespace().count() >= 3;
        return verdict(
            ok,
            if ok {
                "the query describes a change (generic photo)"
            } else {
                "the query is too short"
            },
        );
    };
    let edits = inferred_edits(reference_scene, target_scene);
    if edits.is_empty() {
        return verdict(false, "the target shows no change");
    }
    if phrase::mentions(query_text, &edits) {
        let mut v = verdict(true, "the query names the change the target shows");
        v["best_match"] = json!(2);
        v
    } else {
        verdict(
            false,
            "the query does not say what changed, so it does not single out the target",
        )
    }
}

/// The edits that turn `before` into `after`, as far as the judge can tell.
fn inferred_edits(before: &Scene, after: &Scene) -> Vec<Edit> {
    use crate::scene::nearest_anchor;
    let mut edits = Vec::new();
    for old in &before.objects {
        let target = before.describe(old.id);
        match after.object(old.id) {
            None => {
                let (from, to) = (before.count(old.kind), after.count(old.kind));
                if to + 1 == from && from > 1 {
                    edits.push(Edit::Count {
                        kind: old.kind,
                        from,
                        to,
                    });
                } else {
                    edits.push(Edit::Remove { target });
                }
            }
            Some(new) => {
                if new.color != old.color {
                    edits.push(Edit::Color {
                        target: target.clone(),
                        to: new.color,
                    });
                }
                if new.material != old.material {
                    edits.push(Edit::Material {
                        target: target.clone(),
                        to: new.material,
                    });
                }
                if new.kind != old.kind {
                    edits.push(Edit::Replace {
                        target: target.clone(),
                        kind: new.kind,
                    });
                } else if new.shape != old.shape {
                    edits.push(Edit::Shape {
                        target: target.clone(),
                        to: new.shape,
                    });
                }
                if new.texture != old.texture {
                    edits.push(Edit::Texture {
                        target: target.clone(),
                        to: new.texture,
                    });
                }
                if (new.x - old.x).abs() > 1e-6 || (new.y - old.y).abs() > 1e-6 {
                    let anchor = crate::scene::ANCHORS
                        .iter()
                        .position(|a| a.0 == nearest_anchor(new.x, new.y))
                        .unwrap_or(4);
                    edits.push(Edit::Move { target, anchor });
                }
            }
        }
    }
    for new in after
        .objects
        .iter()
        .filter(|o| before.object(o.id).is_none())
    {
        let (from, to) = (before.count(new.kind), after.count(new.kind));
        if from > 0 && to == from + 1 {
            edits.push(Edit::Count {
                kind: new.kind,
                from,
                to,
            });
        } else {
            let anchor = crate::scene::ANCHORS
                .iter()
                .position(|a| a.0 == nearest_anchor(new.x, new.y))
                .unwrap_or(4);
            edits.push(Edit::Add {
                color: new.color,
                kind: new.kind,
                anchor,
            });
        }
    }
    if let (Some(a), Some(b)) = (&before.figure, &after.figure)
        && a.pose != b.pose
    {
        edits.push(Edit::Pose { to: b.pose });
    }
    if before.mirrored != after.mirrored {
        edits.push(Edit::Mirror);
    }
    if (before.zoom - after.zoom).abs() > 1e-6 {
        edits.push(Edit::Zoom {
            zoom_in: after.zoom > before.zoom,
        });
    }
    if before.style != after.style {
        edits.push(Edit::Style { to: after.style });
    }
    if before.time != after.time {
        edits.push(Edit::Time { to: after.time });
    }
    if before.weather != after.weather {
        edits.push(Edit::Weather { to: after.weather });
    }
    edits
}

/// A minimal JSON value that satisfies simple schemas (required properties with typed
/// placeholders), for schema names the simulator does not know.
#[must_use]
pub fn minimal_instance(schema: &Value) -> Value {
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return values.first().cloned().unwrap_or(Value::Null);
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let mut out = serde_json::Map::new();
            let properties = schema.get("properties").and_then(Value::as_object);
            for name in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                let property = properties.and_then(|p| p.get(name)).unwrap_or(&Value::Null);
                out.insert(name.to_string(), minimal_instance(property));
            }
            Value::Object(out)
        }
        Some("array") => json!([]),
        Some("string") => json!("sim"),
        Some("integer") => json!(schema.get("minimum").and_then(Value::as_i64).unwrap_or(0)),
        Some("number") => json!(0.0),
        Some("boolean") => json!(true),
        _ => Value::Null,
    }
}
