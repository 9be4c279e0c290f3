//! The shipped taxonomy, and the errors of a broken one.

use crate::fixture::{Fixture, repo_root};

#[test]
fn shipped_taxonomy_has_the_edir_shape() {
    let (taxonomy, diagnostics, _) =
        edir_config::compile_taxonomy_file(&repo_root().join("pipelines/taxonomy.yaml"));
    assert!(diagnostics.is_empty(), "{diagnostics:?}");
    let taxonomy = taxonomy.unwrap();
    let categories: Vec<&str> = taxonomy.categories.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(
        categories,
        ["attribute", "object", "relationship", "global", "complex"]
    );
    let labels: Vec<&str> = taxonomy
        .subcategories
        .iter()
        .map(|s| s.label.as_str())
        .collect();
    assert_eq!(
        labels,
        [
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
            "complex"
        ]
    );
    for sub in &taxonomy.subcategories {
        assert_eq!(sub.id, format!("{}.{}", sub.category, sub.label));
        assert!(sub.examples.len() >= 2, "{} needs two examples", sub.id);
        assert!(sub.avoid.is_some(), "{} says what to avoid", sub.id);
    }
    assert_eq!(taxonomy.find("color").unwrap().id, "attribute.color");
    assert_eq!(taxonomy.find("object.count").unwrap().label, "count");
}

#[test]
fn duplicate_and_misnamed_subcategories() {
    let fixture = Fixture::new();
    fixture
        .edit(
            "pipelines/taxonomy.yaml",
            "      - id: attribute.material\n        label: material",
            "      - id: attribute.color\n        label: material",
        )
        .edit(
            "pipelines/taxonomy.yaml",
            "      - id: object.count\n",
            "      - id: count\n",
        );
    let out = fixture.check();
    assert!(
        out.contains("error: duplicate id `attribute.color`\n  --> <tmp>/pipelines/taxonomy.yaml:"),
        "{out}"
    );
    assert!(
        out.contains("error: invalid subcategory id `count`\n"),
        "{out}"
    );
    assert!(out.contains("= help: write it as `object.count`"), "{out}");
}

#[test]
fn missing_taxonomy_file() {
    let out = Fixture::new().remove("pipelines/taxonomy.yaml").check();
    assert!(out.starts_with("error: cannot read taxonomy `<tmp>/pipelines/taxonomy.yaml`\n  --> <tmp>/pipelines/full.yaml:14:11\n"), "{out}");
}

#[test]
fn a_subcategory_can_be_added_without_code() {
    let fixture = Fixture::new();
    fixture.edit(
        "pipelines/taxonomy.yaml",
        "  - id: complex\n",
        "      - id: global.lighting\n        label: lighting\n        definition: Change the lighting.\n        guidance: Use a visible light change.\n        examples: [Light the room with candles., Add a spotlight on the stage.]\n  - id: complex\n",
    );
    let pipeline = fixture.compile().pipeline.expect("valid");
    assert_eq!(pipeline.subcategories.len(), 16);
    assert!(pipeline.taxonomy.find("lighting").is_some());
}
