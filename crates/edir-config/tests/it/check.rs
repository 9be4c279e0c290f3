//! One test per class of bad pipeline: the message, the location and the caret are pinned.

use crate::fixture::Fixture;

const PIPELINE: &str = "pipelines/full.yaml";

/// Asserts `output` holds `block` (several consecutive lines) verbatim.
#[track_caller]
fn assert_block(output: &str, block: &str) {
    assert!(output.contains(block), "expected\n{block}\nin\n{output}");
}

#[track_caller]
fn assert_summary(output: &str, errors: usize) {
    let plural = if errors == 1 { "" } else { "s" };
    let line = output.lines().last().unwrap_or_default();
    assert!(
        line.starts_with(&format!("{errors} error{plural}, ")),
        "summary `{line}` in\n{output}"
    );
}

#[test]
fn shipped_pipeline_is_valid() {
    let fixture = Fixture::new();
    let compiled = fixture.compile();
    assert!(compiled.diagnostics.is_empty(), "{}", compiled.render());
    let pipeline = compiled.pipeline.unwrap();
    assert_eq!(pipeline.name, "edir-full");
    assert_eq!(pipeline.subcategories.len(), 15);
    assert_eq!(
        pipeline.total_quota(),
        5010,
        "about 5,000 accepted queries, like EDIR"
    );
    let order: Vec<&str> = pipeline.stages.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        order,
        [
            "instruct",
            "feasible",
            "target",
            "negatives",
            "no_op",
            "query",
            "judge_edit",
            "judge_query"
        ]
    );
    assert_eq!(pipeline.endpoints["editor"].url_env, "EDIR_EDITOR_URL");
    assert_eq!(pipeline.endpoints["vlm"].api, edir_config::Api::Chat);
    assert_eq!(
        pipeline.endpoints["embed"].api,
        edir_config::Api::Embeddings
    );
    assert_eq!(pipeline.hash.len(), 64);
}

#[test]
fn missing_source_folder_is_only_a_warning() {
    let fixture = Fixture::new();
    std::fs::remove_dir(fixture.path("data/reference")).unwrap();
    let compiled = fixture.compile();
    assert!(compiled.pipeline.is_some());
    let out = fixture.check();
    assert_block(
        &out,
        "warning: source folder `<tmp>/data/reference` does not exist\n  --> <tmp>/pipelines/full.yaml:21:11\n",
    );
    assert_summary(&out, 0);
}

#[test]
fn yaml_syntax_error() {
    let out = Fixture::new()
        .edit(
            PIPELINE,
            "  per_subcategory: 334",
            "  per_subcategory: [334",
        )
        .check();
    assert!(out.starts_with("error: invalid YAML: "), "{out}");
    assert_block(&out, "--> <tmp>/pipelines/full.yaml:");
    assert_summary(&out, 1);
}

#[test]
fn unknown_key_with_suggestion() {
    let out = Fixture::new()
        .edit(
            PIPELINE,
            "    prompt: ../prompts/query.md",
            "    promt: ../prompts/query.md",
        )
        .check();
    assert_block(
        &out,
        "error: unknown key `promt`\n   --> <tmp>/pipelines/full.yaml:114:5\n    |\n114 |     promt: ../prompts/query.md\n    |     ^^^^^\n    = help: did you mean `prompt`?\n",
    );
}

#[test]
fn unknown_section_with_suggestion() {
    let out = Fixture::new()
        .edit(PIPELINE, "score:\n", "scores:\n")
        .check();
    assert_block(&out, "error: unknown section `scores`\n");
    assert_block(&out, "= help: did you mean `score`?");
}

#[test]
fn wrong_type_points_at_the_value() {
    let out = Fixture::new()
        .edit(
            PIPELINE,
            "    max_in_flight: 64\n    timeout_s: 180\n    gpus: 1\n  llm:",
            "    max_in_flight: many\n    timeout_s: 180\n    gpus: 1\n  llm:",
        )
        .check();
    assert_block(
        &out,
        "error: expected an integer, found the string `many`\n  --> <tmp>/pipelines/full.yaml:45:20\n   |\n45 |     max_in_flight: many\n   |                    ^^^^\n",
    );
}

#[test]
fn unknown_stage_in_needs_with_did_you_mean() {
    let out = Fixture::new()
        .edit(
            PIPELINE,
            "    needs: [query, target, negatives, judge_edit]",
            "    needs: [query, target, negatvies, judge_edit]",
        )
        .check();
    assert_block(
        &out,
        "error: unknown stage `negatvies` in `needs`\n   --> <tmp>/pipelines/full.yaml:131:28\n    |\n131 |     needs: [query, target, negatvies, judge_edit]\n    |                            ^^^^^^^^^ not defined in this pipeline\n    = help: did you mean `negatives`?\n",
    );
}

#[test]
fn dependency_cycle_is_printed_as_a_path() {
    let out = Fixture::new()
        .edit(
            PIPELINE,
            "    needs: [feasible, instruct]\n    prompt: ../prompts/query.md",
            "    needs: [feasible, instruct, judge_query]\n    prompt: ../prompts/query.md",
        )
        .check();
    assert_block(
        &out,
        "error: dependency cycle: query -> judge_query -> query\n   --> <tmp>/pipelines/full.yaml:131:13\n",
    );
    assert_block(
        &out,
        "    |             ^^^^^ this dependency closes the cycle",
    );
    assert_summary(&out, 1);
}

#[test]
fn self_dependency_is_a_cycle() {
    let out = Fixture::new()
        .edit(
            PIPELINE,
            "    needs: [target]\n",
            "    needs: [target, no_op]\n",
        )
        .check();
    assert_block(&out, "error: dependency cycle: no_op -> no_op\n");
}

#[test]
fn missing_prompt_file() {
    let out = Fixture::new().remove("prompts/query.md").check();
    assert_block(
        &out,
        "error: cannot read prompt template `<tmp>/prompts/query.md`\n   --> <tmp>/pipelines/full.yaml:114:13\n    |\n114 |     prompt: ../prompts/query.md\n    |             ^^^^^^^^^^^^^^^^^^^ file not found\n    = help: paths are relative to the pipeline file's folder `<tmp>/pipelines`\n",
    );
    assert_summary(&out, 1);
}

#[test]
fn missing_schema_file() {
    let out = Fixture::new()
        .remove("prompts/judge_edit.schema.json")
        .check();
    assert_block(
        &out,
        "error: cannot read JSON schema `<tmp>/prompts/judge_edit.schema.json`\n   --> <tmp>/pipelines/full.yaml:124:13\n",
    );
}

#[test]
fn template_variable_no_stage_provides() {
    let out = Fixture::new()
        .edit(
            "prompts/query.md",
            "The change (an instruction given to an image editor): {{ instruct.edit }}",
            "The change: {{ instrcut.edit }}",
        )
        .check();
    assert_block(
        &out,
        "error: unknown template variable `instrcut.edit`\n --> <tmp>/prompts/query.md:4:16\n  |\n4 | The change: {{ instrcut.edit }}\n  |                ^^^^^^^^^^^^^ no upstream stage or sample variable provides `instrcut`\n  = help: did you mean `instruct`?\n",
    );
}

#[test]
fn template_field_the_schema_does_not_define() {
    let out = Fixture::new()
        .edit(
            PIPELINE,
            "    template: \"{{ instruct.edit }}\"\n",
            "    template: \"{{ instruct.edti }}\"\n",
        )
        .check();
    assert_block(
        &out,
        "error: `instruct` has no field `edti`\n  --> <tmp>/pipelines/full.yaml:92:15\n",
    );
    assert_block(&out, "= help: did you mean `instruct.edit`?");
}

#[test]
fn template_variable_of_a_stage_that_is_not_upstream() {
    let out = Fixture::new()
        .edit(
            "prompts/query.md",
            "Type of change: {{ subcategory.label }}",
            "Type of change: {{ judge_edit.reason }}",
        )
        .check();
    assert_block(
        &out,
        "error: `judge_edit` is a stage, but not upstream of `query`\n --> <tmp>/prompts/query.md:",
    );
    assert_block(&out, "= help: add `judge_edit` to the `needs` of `query`");
}

#[test]
fn item_outside_a_fan_out_stage() {
    let out = Fixture::new()
        .edit(
            PIPELINE,
            "    template: \"{{ instruct.edit }}\"\n",
            "    template: \"{{ instruct.edit }} {{ item }}\"\n",
        )
        .check();
    assert_block(&out, "error: unknown template variable `item`\n");
    assert_block(&out, "`item` is only defined in `for_each` stages");
}

#[test]
fn invalid_json_schema() {
    let out = Fixture::new()
        .edit(
            "prompts/query.schema.json",
            "\"query\": { \"type\": \"string\"",
            "\"query\": { \"type\": \"strng\"",
        )
        .check();
    assert_block(
        &out,
        "error: invalid JSON schema at `/properties/query/type`: ",
    );
    assert_block(&out, "--> <tmp>/prompts/query.schema.json:6:16\n");
    assert_summary(&out, 1);
}

#[test]
fn schema_that_is_not_json() {
    let out = Fixture::new()
        .edit(
            "prompts/query.schema.json",
            "\"required\": [\"query\"],",
            "\"required\": [\"query\"],,",
        )
        .check();
    assert_block(
        &out,
        "error: invalid JSON in schema: key must be a string\n --> <tmp>/prompts/query.schema.json:8:25\n",
    );
    assert_summary(&out, 1);
}

#[test]
fn judge_schema_without_verdict() {
    let fixture = Fixture::new();
    fixture.write("prompts/judge_edit.schema.json", r#"{"type": "object", "properties": {"reason": {"type": "string"}}, "required": ["reason"]}"#);
    let out = fixture.check();
    assert_block(
        &out,
        "error: a judge schema must require a `verdict` property; `<tmp>/prompts/judge_edit.schema.json` does not\n   --> <tmp>/pipelines/full.yaml:124:13\n",
    );
}

#[test]
fn undefined_endpoint() {
    let out = Fixture::new()
        .edit(PIPELINE, "    chat: llm\n", "    chat: lm\n")
        .check();
    assert_block(
        &out,
        "error: unknown endpoint `lm`\n   --> <tmp>/pipelines/full.yaml:112:11\n    |\n112 |     chat: lm\n    |           ^^ not defined under `endpoints`\n    = help: did you mean `llm`?\n",
    );
    // The now unused `llm` endpoint is worth a warning too.
    assert_block(&out, "warning: endpoint `llm` is not used by any stage");
}

#[test]
fn endpoint_used_for_two_apis() {
    let out = Fixture::new()
        .edit(
            PIPELINE,
            "  negatives:\n    edit: editor\n",
            "  negatives:\n    edit: vlm\n",
        )
        .check();
    assert_block(
        &out,
        "error: endpoint `vlm` is used for chat and for image edits\n  --> <tmp>/pipelines/full.yaml:97:11\n",
    );
}

#[test]
fn unknown_subcategory_in_quota_overrides() {
    let out = Fixture::new()
        .edit(
            PIPELINE,
            "  negatives: 5 ",
            "  overrides: { attribute.colour: 10 }\n  negatives: 5 ",
        )
        .check();
    assert_block(
        &out,
        "error: unknown subcategory `attribute.colour` in `quota.overrides`\n  --> <tmp>/pipelines/full.yaml:28:16\n",
    );
    assert_block(&out, "= help: did you mean `attribute.color`?");
}

#[test]
fn unknown_subcategory_in_selection() {
    let out = Fixture::new()
        .edit(
            PIPELINE,
            "seed: 20260116\n",
            "seed: 20260116\nsubcategories: [color, object.removal]\n",
        )
        .check();
    assert_block(
        &out,
        "error: unknown subcategory `object.removal`\n  --> <tmp>/pipelines/full.yaml:16:24\n",
    );
    assert_block(&out, "= help: did you mean `object.remove`?");
}

#[test]
fn zero_and_negative_quotas() {
    let out = Fixture::new()
        .edit(PIPELINE, "  per_subcategory: 334", "  per_subcategory: 0")
        .edit(
            PIPELINE,
            "  negatives: 5 ",
            "  overrides: { color: -3 }\n  negatives: 5 ",
        )
        .check();
    assert_block(
        &out,
        "error: `quota.per_subcategory` must be at least 1, found 0\n  --> <tmp>/pipelines/full.yaml:26:20\n   |\n26 |   per_subcategory: 0                 # 15 x 334 = 5,010 accepted queries (EDIR has 5,000)\n   |                    ^ zero\n",
    );
    assert_block(
        &out,
        "error: the quota of `color` must be at least 1, found -3\n  --> <tmp>/pipelines/full.yaml:28:23\n",
    );
    assert_summary(&out, 2);
}

#[test]
fn every_problem_is_reported_at_once() {
    let out = Fixture::new()
        .edit(PIPELINE, "    chat: llm\n", "    chat: lm\n")
        .edit(PIPELINE, "  per_subcategory: 334", "  per_subcategory: -1")
        .edit(PIPELINE, "    needs: [target]\n", "    needs: [targte]\n")
        .edit(
            PIPELINE,
            "    timeout_s: 120\n    gpus: 1\n  editor:",
            "    timeout_s: soon\n    gpus: 1\n  editor:",
        )
        .edit(
            PIPELINE,
            "    prompt: ../prompts/judge_query.md",
            "    prompt: ../prompts/judge_queyr.md",
        )
        .check();
    for message in [
        "error: unknown endpoint `lm`",
        "error: `quota.per_subcategory` must be at least 1, found -1",
        "error: unknown stage `targte` in `needs`",
        "error: expected a number, found the string `soon`",
        "error: cannot read prompt template `<tmp>/prompts/judge_queyr.md`",
    ] {
        assert_block(&out, message);
    }
    assert_summary(&out, 5);
}

#[test]
fn stage_without_operator_and_with_two() {
    let out = Fixture::new()
        .edit(
            PIPELINE,
            "  feasible:\n    filter: \"instruct.feasible and instruct.edit | length > 0\"\n",
            "  feasible:\n",
        )
        .edit(
            PIPELINE,
            "  no_op:\n    filter:",
            "  no_op:\n    chat: vlm\n    filter:",
        )
        .check();
    assert_block(&out, "error: stage `feasible` has no operator\n");
    assert_block(
        &out,
        "error: stage `no_op` has two operators, `chat` and `filter`\n",
    );
}

#[test]
fn bad_filter_expression() {
    let out = Fixture::new()
        .edit(
            PIPELINE,
            "image_distance(reference, target.image) > 0.002",
            "image_distance(reference, target.image) >",
        )
        .check();
    assert_block(&out, "error: invalid filter expression: ");
}

#[test]
fn image_of_a_stage_that_makes_none() {
    let out = Fixture::new()
        .edit(
            PIPELINE,
            "    images: [reference, target.image]\n",
            "    images: [reference, query.image]\n",
        )
        .check();
    assert_block(&out, "error: `query` is not upstream of `judge_edit`\n");
    let out = Fixture::new()
        .edit(
            PIPELINE,
            "    images: [reference, target.image]\n",
            "    images: [reference, target.images]\n",
        )
        .check();
    assert_block(&out, "error: `target` makes one image\n");
    assert_block(&out, "= help: use `target.image`");
}

#[test]
fn pipeline_file_missing() {
    let compiled = edir_config::compile_file(std::path::Path::new("/nonexistent/pipeline.yaml"));
    assert_eq!(
        compiled.render(),
        "error: cannot read pipeline `/nonexistent/pipeline.yaml`\n --> /nonexistent/pipeline.yaml\n  = note: file not found\n\n1 error, 0 warnings\n"
    );
}

#[test]
fn hash_changes_with_prompt_text_not_with_comments() {
    let fixture = Fixture::new();
    let before = fixture.compile().pipeline.unwrap();
    fixture.edit(
        PIPELINE,
        "# The full EDIR pipeline",
        "# The complete EDIR pipeline",
    );
    let comment = fixture.compile().pipeline.unwrap();
    assert_eq!(
        before.hash, comment.hash,
        "comments do not change what runs"
    );
    fixture.edit(
        "prompts/query.md",
        "One sentence, 5 to 35 words.",
        "One sentence, 5 to 30 words.",
    );
    let after = fixture.compile().pipeline.unwrap();
    assert_ne!(before.hash, after.hash);
    let stage_hash =
        |p: &edir_config::Pipeline, id: &str| p.stage(id).unwrap().definition_hash.clone();
    assert_ne!(stage_hash(&before, "query"), stage_hash(&after, "query"));
    assert_eq!(
        stage_hash(&before, "instruct"),
        stage_hash(&after, "instruct")
    );
}

#[test]
fn env_overrides_endpoint_urls() {
    let pipeline = Fixture::new().compile().pipeline.unwrap();
    let vlm = &pipeline.endpoints["vlm"];
    let env =
        |name: &str| (name == "EDIR_VLM_URL").then(|| "http://a:1/v1, http://b:2/v1/".to_string());
    assert_eq!(vlm.effective_urls(env), ["http://a:1/v1", "http://b:2/v1"]);
    assert_eq!(vlm.effective_urls(|_| None), ["http://127.0.0.1:8001/v1"]);
}
