//! The simulated query writer: varied, natural phrasings of an edit that keep the words a
//! reader needs (the new colour, the object), and the words a judge looks for.

use crate::edit::Edit;
use crate::rng::Rng;
use crate::scene::ANCHORS;

/// A query for a list of edits (one, or two for complex).
#[must_use]
pub fn query(edits: &[Edit], rng: &mut Rng) -> String {
    let parts: Vec<String> = edits.iter().map(|e| phrase(e, rng)).collect();
    let joined = parts.join(" and ");
    let openers = [
        "",
        "I want this but ",
        "Same picture, but ",
        "Can I see it ",
        "Show me this ",
    ];
    let opener = *rng.pick(&openers);
    let mut text = format!("{opener}{joined}");
    if let Some(first) = text.get(..1) {
        text = first.to_uppercase() + &text[1..];
    }
    if !text.ends_with('?') {
        text.push(if opener.starts_with("Can") { '?' } else { '.' });
    }
    text
}

/// An anchor without its preposition: `top left`, `middle`.
fn place_words(anchor: usize) -> &'static str {
    let phrase = ANCHORS[anchor].0;
    ["at the ", "on the ", "in the "]
        .iter()
        .find_map(|p| phrase.strip_prefix(p))
        .unwrap_or(phrase)
}

fn phrase(edit: &Edit, rng: &mut Rng) -> String {
    let pick = |rng: &mut Rng, options: Vec<String>| options[rng.below(options.len())].clone();
    match edit {
        Edit::Color { target, to } => pick(
            rng,
            vec![
                format!("with the {} painted {}", target, to.word()),
                format!("where the {} is {} instead", target, to.word()),
                format!(
                    "with a {} {}",
                    to.word(),
                    target.split(' ').nth(1).unwrap_or(target)
                ),
            ],
        ),
        Edit::Material { target, to } => pick(
            rng,
            vec![
                format!("with the {target} made of {}", to.word()),
                format!("where the {target} is {} instead", to.word()),
            ],
        ),
        Edit::Shape { target, to } => pick(
            rng,
            vec![
                format!("with the {target} {} in shape", to.word()),
                format!("where the {target} has a {} outline", to.word()),
            ],
        ),
        Edit::Texture { target, to } => pick(
            rng,
            vec![
                format!("with a {} pattern on the {target}", to.word()),
                format!("where the {target} is {}", to.word()),
            ],
        ),
        Edit::Add {
            color,
            kind,
            anchor,
        } => pick(
            rng,
            vec![
                format!(
                    "with an added {} {} {}",
                    color.word(),
                    kind.word(),
                    ANCHORS[*anchor].0
                ),
                format!(
                    "plus a {} {} {}",
                    color.word(),
                    kind.word(),
                    ANCHORS[*anchor].0
                ),
            ],
        ),
        Edit::Remove { target } => pick(
            rng,
            vec![
                format!("without the {target}"),
                format!("with the {target} removed"),
            ],
        ),
        Edit::Replace { target, kind } => pick(
            rng,
            vec![
                format!("with a {} where the {target} was", kind.word()),
                format!("with the {target} swapped for a {}", kind.word()),
            ],
        ),
        Edit::Count { kind, to, .. } => {
            let number = crate::edit::count_word(*to);
            let noun = if *to == 1 {
                kind.word().to_string()
            } else {
                kind.plural()
            };
            pick(
                rng,
                vec![
                    format!("with {number} {noun}"),
                    format!("showing exactly {number} {noun}"),
                ],
            )
        }
        Edit::Move { target, anchor } => {
            let place = place_words(*anchor);
            pick(
                rng,
                vec![
                    format!("with the {target} moved to the {place}"),
                    format!("where the {target} sits at the {place}"),
                ],
            )
        }
        Edit::Pose { to } => pick(
            rng,
            vec![
                format!("with the person {}", to.word()),
                format!("where the person is {}", to.word()),
            ],
        ),
        Edit::Mirror => pick(
            rng,
            vec![
                "mirrored left to right".to_string(),
                "as a mirror image".to_string(),
            ],
        ),
        Edit::Zoom { zoom_in: true } => pick(
            rng,
            vec![
                "zoomed in closer".to_string(),
                "from closer up, zoomed in".to_string(),
            ],
        ),
        Edit::Zoom { zoom_in: false } => {
            pick(rng, vec!["zoomed out to the whole scene".to_string()])
        }
        Edit::Style { to } => pick(
            rng,
            vec![
                format!("as a {}", to.word()),
                format!("drawn like a {}", to.word()),
            ],
        ),
        Edit::Time { to } => pick(
            rng,
            vec![format!("at {}", to.word()), format!("but at {}", to.word())],
        ),
        Edit::Weather { to } => pick(
            rng,
            vec![
                format!("in {} weather", to.word()),
                format!("when it is {}", to.word()),
            ],
        ),
    }
}

/// Words a faithful query about this edit must contain (any one of each group).
#[must_use]
pub fn key_words(edit: &Edit) -> Vec<Vec<String>> {
    let words = |list: &[&str]| list.iter().map(ToString::to_string).collect::<Vec<_>>();
    match edit {
        Edit::Color { to, .. } => vec![vec![to.word().to_string()]],
        Edit::Material { to, .. } => vec![vec![to.word().to_string()]],
        Edit::Shape { to, .. } => vec![vec![to.word().to_string()]],
        Edit::Texture { to, .. } => vec![vec![to.word().to_string()]],
        Edit::Add { kind, .. } => vec![
            vec![kind.word().to_string()],
            words(&["added", "plus", "add"]),
        ],
        Edit::Remove { target } => vec![
            words(&["without", "removed", "remove"]),
            vec![target.split(' ').nth(1).unwrap_or(target).to_string()],
        ],
        Edit::Replace { kind, .. } => vec![vec![kind.word().to_string()]],
        Edit::Count { to, .. } => vec![vec![crate::edit::count_word(*to)]],
        Edit::Move { anchor, .. } => vec![vec![place_words(*anchor).to_string()]],
        Edit::Pose { to } => vec![vec![to.word().to_string()]],
        Edit::Mirror => vec![words(&["mirror"])],
        Edit::Zoom { .. } => vec![words(&["zoom"])],
        Edit::Style { to } => vec![vec![to.word().to_string()]],
        Edit::Time { to } => vec![vec![to.word().to_string()]],
        Edit::Weather { to } => vec![vec![to.word().to_string()]],
    }
}

/// Whether `query` has a word of every group of every edit.
#[must_use]
pub fn mentions(query: &str, edits: &[Edit]) -> bool {
    let query = query.to_lowercase();
    edits.iter().all(|e| {
        key_words(e)
            .iter()
            .all(|group| group.iter().any(|w| query.contains(w.as_str())))
    })
}
