//! Every subcategory's edit changes the pixels where, and only where, the scene says.

use edir_sim::edit::{self, Edit};
use edir_sim::propose;
use edir_sim::render::{self, Pixels, figure_box, object_box};
use edir_sim::rng::Rng;
use edir_sim::scene::Scene;

const LABELS: &[&str] = &[
    "color",
    "material",
    "shape",
    "texture",
    "addition",
    "remove",
    "replace",
    "count",
    "spatial",
    "action",
    "viewpoint",
    "style",
    "time",
    "weather",
];

/// A scene (photo style, unmirrored, so boxes map to pixels directly) that allows `label`.
fn scene_for(label: &str, seed: u64) -> (Scene, Vec<Edit>) {
    for attempt in 0..200 {
        let mut rng = Rng::from_parts(&[seed, attempt]);
        let scene = Scene::random(&mut rng, 256, 192);
        if let Ok(edits) = propose::propose(&scene, label, &mut rng) {
            return (scene, edits);
        }
    }
    panic!("no scene allows a {label} edit");
}

fn changed(a: &Pixels, b: &Pixels) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for y in 0..a.height {
        for x in 0..a.width {
            if a.get(x, y) != b.get(x, y) {
                out.push((x, y));
            }
        }
    }
    out
}

fn inside(boxes: &[(u32, u32, u32, u32)], (x, y): (u32, u32)) -> bool {
    boxes
        .iter()
        .any(|&(x0, y0, x1, y1)| x >= x0 && x < x1 && y >= y0 && y < y1)
}

/// Boxes of what differs between the two scenes: objects added, removed or changed; the person.
fn expected_boxes(before: &Scene, after: &Scene) -> Vec<(u32, u32, u32, u32)> {
    let mut boxes = Vec::new();
    for o in &before.objects {
        if after.object(o.id) != Some(o) {
            boxes.push(object_box(before, o));
            if let Some(n) = after.object(o.id) {
                boxes.push(object_box(after, n));
            }
        }
    }
    for o in after
        .objects
        .iter()
        .filter(|o| before.object(o.id).is_none())
    {
        boxes.push(object_box(after, o));
    }
    if before.figure != after.figure {
        for s in [before, after] {
            if let Some(f) = &s.figure {
                boxes.push(figure_box(s, f));
            }
        }
    }
    boxes
}

#[test]
fn every_subcategory_changes_exactly_its_region() {
    for label in LABELS {
        for seed in 0..6 {
            let (before, edits) = scene_for(label, seed);
            let instruction: Vec<String> = edits.iter().map(Edit::sentence).collect();
            let instruction = instruction.join(" ");
            let after = edit::apply_instruction(&before, &instruction).unwrap();
            assert_ne!(
                before, after,
                "{label}: `{instruction}` changed nothing in the scene"
            );
            let (a, b) = (render::render(&before), render::render(&after));
            let diff = changed(&a, &b);
            assert!(
                !diff.is_empty(),
                "{label}: `{instruction}` changed no pixel"
            );
            // Complex edits are global when either of their two edits is.
            let global = edits
                .iter()
                .any(|e| matches!(e.label(), "viewpoint" | "style" | "time" | "weather"));
            if global {
                let share = diff.len() as f64 / f64::from(a.width * a.height);
                assert!(
                    share > 0.3,
                    "{label}: `{instruction}` changed only {share:.2} of the image"
                );
            } else {
                let boxes = expected_boxes(&before, &after);
                assert!(!boxes.is_empty(), "{label}: no object or person changed");
                let outside: Vec<_> = diff
                    .iter()
                    .filter(|p| !inside(&boxes, **p))
                    .take(3)
                    .collect();
                assert!(
                    outside.is_empty(),
                    "{label}: `{instruction}` changed pixels outside its objects: {outside:?}"
                );
                // And the change is visible: a good part of the region changed.
                assert!(
                    diff.len() > 20,
                    "{label}: only {} pixels changed",
                    diff.len()
                );
            }
        }
    }
}

#[test]
fn sentences_parse_back_to_the_same_edit() {
    for label in LABELS {
        for seed in 0..10 {
            let (_, edits) = scene_for(label, seed);
            for e in &edits {
                assert_eq!(&edit::parse(&e.sentence()).unwrap(), e, "{}", e.sentence());
            }
        }
    }
}

#[test]
fn complex_edits_make_two_changes() {
    let (before, edits) = scene_for("complex", 3);
    assert_eq!(edits.len(), 2);
    assert_ne!(edits[0].label(), edits[1].label());
    let text: Vec<String> = edits.iter().map(Edit::sentence).collect();
    let after = edit::apply_instruction(&before, &text.join(" ")).unwrap();
    let mut one = before.clone();
    edits[0].apply(&mut one).unwrap();
    assert_ne!(one, after, "the second edit did something too");
}

#[test]
fn extra_changes_are_distinct_and_leave_the_edit_alone() {
    for seed in 0..20 {
        let (before, edits) = scene_for("color", seed);
        let mut after = before.clone();
        edits[0].apply(&mut after).unwrap();
        let extras = propose::extras(&before, &after, &edits, 5, &mut Rng::new(seed));
        assert!(
            extras.len() >= 3,
            "seed {seed}: only {} extras",
            extras.len()
        );
        let sentences: std::collections::HashSet<String> =
            extras.iter().map(Edit::sentence).collect();
        assert_eq!(sentences.len(), extras.len());
        let target = edits[0].target().unwrap().to_string();
        for extra in &extras {
            let negative = format!("{} Also: {}", edits[0].sentence(), extra.sentence());
            let scene = edit::apply_instruction(&before, &negative).unwrap();
            assert_ne!(scene, after, "the negative differs from the target");
            // The base edit still holds in the negative.
            let id = before.resolve(&target).unwrap();
            assert_eq!(
                scene.object(id).map(|o| o.color),
                after.object(id).map(|o| o.color)
            );
        }
    }
}

#[test]
fn infeasible_requests_say_why() {
    let mut rng = Rng::new(1);
    let mut scene = Scene::random(&mut rng, 128, 128);
    scene.figure = None;
    let error = propose::propose(&scene, "action", &mut rng).unwrap_err();
    assert_eq!(error, "there is no person in the image");
    scene.objects.truncate(1);
    assert!(propose::propose(&scene, "remove", &mut rng).is_err());
}

#[test]
fn scenes_render_at_many_sizes() {
    for (w, h) in [(64, 64), (256, 192), (1024, 768)] {
        let scene = Scene::random(&mut Rng::new(u64::from(w)), w, h);
        let pixels = render::render(&scene);
        assert_eq!(
            (pixels.width, pixels.height, pixels.data.len()),
            (w, h, (w * h * 3) as usize)
        );
    }
}
