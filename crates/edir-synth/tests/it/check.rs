//! `check` and `taxonomy`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn edir_synth(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edir-synth"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[test]
fn check_accepts_the_shipped_pipeline() {
    let out = edir_synth(&["check", "pipelines/full.yaml"], &repo());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("`pipelines/full.yaml` is valid: 8 stages, 15 subcategories, 5010 accepted samples wanted, 4 endpoints\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  judge_query  judge vlm <- query, target, negatives, judge_edit\n"),
        "{stdout}"
    );
}

#[test]
fn check_rejects_a_broken_pipeline_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for folder in ["pipelines", "prompts"] {
        std::fs::create_dir_all(dir.path().join(folder)).unwrap();
        for entry in std::fs::read_dir(repo().join(folder)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(
                entry.path(),
                dir.path().join(folder).join(entry.file_name()),
            )
            .unwrap();
        }
    }
    let pipeline = dir.path().join("pipelines/full.yaml");
    let yaml = fs_err::read_to_string(&pipeline)
        .unwrap()
        .replace("    needs: [target]\n", "    needs: [targt]\n");
    std::fs::write(&pipeline, yaml).unwrap();
    let out = edir_synth(&["check", "pipelines/full.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "error: unknown stage `targt` in `needs`\n   --> pipelines/full.yaml:107:13\n"
        ),
        "{stderr}"
    );
    assert!(
        stderr.ends_with("1 error, 1 warning\n"),
        "the missing source folder is a warning: {stderr}"
    );
}

#[test]
fn check_of_a_missing_file_exits_2() {
    let out = edir_synth(&["check", "nope.yaml"], &repo());
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).starts_with("error: cannot read pipeline `nope.yaml`\n"));
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    assert_eq!(edir_synth(&["chekc"], &repo()).status.code(), Some(2));
    assert_eq!(edir_synth(&["check"], &repo()).status.code(), Some(2));
    let help = edir_synth(&["--help"], &repo());
    assert_eq!(help.status.code(), Some(0));
    assert!(text(&help.stdout).contains("check"));
}

#[test]
fn taxonomy_lists_fifteen_subcategories() {
    let out = edir_synth(&["taxonomy"], &repo());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("Attribute (attribute)\n  attribute.color "),
        "{stdout}"
    );
    assert!(
        stdout.ends_with("5 categories, 15 subcategories\n"),
        "{stdout}"
    );
}

#[test]
fn taxonomy_json_of_a_pipeline() {
    let out = edir_synth(&["taxonomy", "pipelines/full.yaml", "--json"], &repo());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let subs = json["subcategories"].as_array().unwrap();
    assert_eq!(subs.len(), 15);
    assert_eq!(subs[0]["id"], "attribute.color");
    assert_eq!(subs[0]["label"], "color");
    assert_eq!(subs[14]["combines"], 2);
    assert_eq!(json["categories"].as_array().unwrap().len(), 5);
}

#[test]
fn sim_writes_reference_scenes() {
    let dir = tempfile::tempdir().unwrap();
    let out = edir_synth(
        &["sim", "--scenes", "4", "--out", "refs", "--sizes", "64,96"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "wrote 4 reference scenes to `refs`\n");
    let mut names: Vec<String> = std::fs::read_dir(dir.path().join("refs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "scene_00000.png",
            "scene_00001.png",
            "scene_00002.png",
            "scene_00003.png"
        ]
    );
    let bytes = std::fs::read(dir.path().join("refs/scene_00000.png")).unwrap();
    assert!(
        bytes.windows(10).any(|w| w == b"edir-scene"),
        "the scene travels in the file"
    );
}

#[test]
fn sim_rejects_a_bad_fault_rate() {
    let out = edir_synth(&["sim", "--port", "0", "--faults", "1.5"], &repo());
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "error: `--faults` must be between 0 and 1, got 1.5\n"
    );
}
