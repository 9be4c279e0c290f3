//! Cache keys. A task's key is `<stage key>:<input hash>`: the stage key (16 hex digits) hashes
//! everything the stage's outputs depend on that is the same for every sample (the stage
//! definition, its prompt and system templates, its schema, the model, the sampling parameters
//! and the pipeline seed); the input hash hashes the task's own inputs (the stage key, the
//! sample's seed and generation, the fan-out item and the upstream outputs).
//!
//! Stale detection compares stage keys: a task whose stage key differs from the pipeline's is
//! stale, and so is everything downstream of it in its sample. Each run records the components
//! of every stage key it uses (in its `run_started` event), so `plan` can say which input
//! changed.

use std::collections::BTreeMap;

use edir_config::{Pipeline, Stage};
use edir_store::STAGE_KEY_LEN;
use serde_json::Value;

use crate::context::Output;

/// A stage's key and what it was made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageKey {
    /// The key (the first [`STAGE_KEY_LEN`] hex digits of the hash of the components).
    pub key: String,
    /// Component name -> hash (or value).
    pub components: BTreeMap<String, String>,
}

fn hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// The key of every stage of `pipeline`, by stage id.
#[must_use]
pub fn stage_keys(pipeline: &Pipeline) -> BTreeMap<String, StageKey> {
    pipeline
        .stages
        .iter()
        .map(|stage| (stage.id.clone(), stage_key(pipeline, stage)))
        .collect()
}

fn stage_key(pipeline: &Pipeline, stage: &Stage) -> StageKey {
    let mut definition = serde_json::to_value(stage).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut definition {
        for field in ["prompt", "system", "schema", "sampling", "definition_hash"] {
            map.remove(field);
        }
    }
    let model = stage
        .op
        .endpoint()
        .and_then(|e| pipeline.endpoints.get(e))
        .map(|e| e.model.clone())
        .unwrap_or_default();
    let sampling = serde_json::to_string(&stage.sampling).unwrap_or_default();
    let text =
        |p: &Option<edir_config::Prompt>| p.as_ref().map(|p| p.hash.clone()).unwrap_or_default();
    let components: BTreeMap<String, String> = [
        ("definition", hash(definition.to_string().as_bytes())),
        ("prompt", text(&stage.prompt)),
        ("system", text(&stage.system)),
        (
            "schema",
            stage
                .schema
                .as_ref()
                .map(|s| s.hash.clone())
                .unwrap_or_default(),
        ),
        ("model", model),
        ("sampling", hash(sampling.as_bytes())),
        ("seed", pipeline.seed.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let canonical = serde_json::to_string(&components).unwrap_or_default();
    StageKey {
        key: hash(canonical.as_bytes())[..STAGE_KEY_LEN].to_string(),
        components,
    }
}

/// What a task's key takes from one upstream output: the hash of its JSON (compact, as
/// `Value::to_string` writes it) and its artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputDigest {
    json: String,
    artifact: Option<String>,
}

impl OutputDigest {
    /// The digest of `output` (its JSON streamed into the hash, not copied).
    #[must_use]
    pub fn of(output: &Output) -> Self {
        let mut hasher = blake3::Hasher::new();
        serde_json::to_writer(&mut hasher, &output.json).expect("hashing does not fail");
        Self {
            json: hasher.finalize().to_hex().to_string(),
            artifact: output.artifact.clone(),
        }
    }
}

/// A task's full cache key (see the module docs): the hash of the compact JSON
/// `[stage_key, seed, item, [[stage, item, output hash, artifact], ...]]`, streamed into the
/// hasher (the same bytes as building that JSON value and printing it).
#[must_use]
pub fn task_key(
    stage_key: &str,
    seed: i64,
    item: i64,
    upstream: &[(&str, i64, Option<OutputDigest>)],
) -> String {
    let inputs: Vec<_> = upstream
        .iter()
        .map(|(stage, item, digest)| {
            let digest = digest.as_ref();
            (
                stage,
                item,
                digest.map(|d| d.json.as_str()),
                digest.and_then(|d| d.artifact.as_deref()),
            )
        })
        .collect();
    let mut hasher = blake3::Hasher::new();
    serde_json::to_writer(&mut hasher, &(stage_key, seed, item, inputs))
        .expect("hashing does not fail");
    format!("{stage_key}:{}", &hasher.finalize().to_hex()[..32])
}

/// Which components differ between two stage keys' component maps, in a sentence
/// (`prompt changed`, `model, sampling changed`).
#[must_use]
pub fn describe_change(
    old: Option<&BTreeMap<String, String>>,
    new: &BTreeMap<String, String>,
) -> String {
    let Some(old) = old else {
        return "its definition changed".to_string();
    };
    let changed: Vec<&str> = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(k, _)| k.as_str())
        .collect();
    if changed.is_empty() {
        "its definition changed".to_string()
    } else {
        format!("{} changed", changed.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The key as it was first defined (a JSON value built and printed): stores made by
    /// earlier versions keep their keys, so nothing goes stale on an upgrade.
    fn task_key_by_value(
        stage_key: &str,
        seed: i64,
        item: i64,
        upstream: &[(&str, i64, Option<Output>)],
    ) -> String {
        let inputs: Vec<Value> = upstream
            .iter()
            .map(|(stage, item, output)| {
                let output = output.as_ref();
                json!([
                    stage,
                    item,
                    output.map(|o| hash(o.json.to_string().as_bytes())),
                    output.and_then(|o| o.artifact.as_deref()),
                ])
            })
            .collect();
        let canonical = json!([stage_key, seed, item, inputs]).to_string();
        format!("{stage_key}:{}", &hash(canonical.as_bytes())[..32])
    }

    #[test]
    fn streamed_task_keys_equal_the_printed_json_ones() {
        let outputs = [
            Some(Output {
                json: json!({"edit": "make the \"car\" red\n", "feasible": true, "n": 1.5,
                             "extra_changes": ["a", "b\u{e9}"], "z": null}),
                artifact: None,
                skipped: false,
            }),
            Some(Output {
                json: json!({"image": "ab".repeat(32)}),
                artifact: Some("ab".repeat(32)),
                skipped: false,
            }),
            None,
        ];
        let upstream: Vec<(&str, i64, Option<Output>)> = vec![
            ("instruct", 0, outputs[0].clone()),
            ("negatives", 3, outputs[1].clone()),
            ("query", 0, outputs[2].clone()),
        ];
        let digests: Vec<(&str, i64, Option<OutputDigest>)> = upstream
            .iter()
            .map(|(s, i, o)| (*s, *i, o.as_ref().map(OutputDigest::of)))
            .collect();
        for (seed, item) in [(0, 0), (-7, 2), (i64::MAX, i64::MIN)] {
            assert_eq!(
                task_key("0123456789abcdef", seed, item, &digests),
                task_key_by_value("0123456789abcdef", seed, item, &upstream)
            );
        }
        assert_eq!(task_key("k", 1, 0, &[]), task_key_by_value("k", 1, 0, &[]));
        // And the key still depends on each input.
        assert_ne!(
            task_key("k", 1, 0, &digests[..1]),
            task_key("k", 1, 0, &digests[1..2])
        );
    }
}
