//! The compiler: pipeline file -> [`Pipeline`], collecting every problem on the way.
//!
//! Order: parse YAML (a syntax error stops here), deserialize each top-level section and each
//! stage and endpoint on its own (one error per part, the rest still checked), then resolve:
//! taxonomy, endpoints, stage operators, `needs` and cycles, files (prompts, schemas), template
//! variables against what the sample and the upstream stages provide, images, quotas. A
//! pipeline is returned only when no error was found; warnings travel with it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use edir_prompt::{Template, content_hash, expression_variables};
use serde::Deserialize;

use crate::diagnostic::{Diagnostic, render_all};
use crate::file::{
    EndpointSection, QuotaSection, RetrySection, SamplingSection, ScoreSection, SourceSection,
    StageSection,
};
use crate::node::{self, Node};
use crate::pipeline::{
    Api, Endpoint, FieldRef, ImageRef, Operator, Pipeline, Prompt, Quota, RetryPolicy, Sampling,
    Schema, Score, Source, SourceKind, Stage,
};
use crate::source::{SourceId, Sources, Span, Spanned, to_u32};
use crate::suggest::did_you_mean;
use crate::taxonomy::{self, Taxonomy};

/// Variables every sample provides to templates, with their fields.
const SAMPLE_VARIABLES: &[(&str, &[&str])] = &[
    ("reference", &["name", "width", "height"]),
    (
        "subcategory",
        &[
            "id",
            "label",
            "category",
            "definition",
            "guidance",
            "avoid",
            "examples",
            "combines",
        ],
    ),
    ("category", &["id", "label", "description"]),
    ("num_negatives", &[]),
    ("seed", &[]),
    ("sample_id", &[]),
];

/// Functions filter expressions may call (the engine implements them).
const FILTER_FUNCTIONS: &[&str] = &["image_distance"];

/// minijinja's own globals, which its static analysis reports as variables.
const TEMPLATE_GLOBALS: &[&str] = &["range", "dict", "namespace", "debug", "loop"];

/// Top-level keys of a pipeline file (keys starting with `x-` are free for anchors).
const TOP_LEVEL_KEYS: &[&str] = &[
    "name",
    "description",
    "taxonomy",
    "seed",
    "workdir",
    "store",
    "subcategories",
    "source",
    "quota",
    "retry",
    "endpoints",
    "stages",
    "score",
];

const DEFAULT_MAX_IN_FLIGHT: u32 = 32;
const DEFAULT_TIMEOUT_S: f64 = 300.0;
const DEFAULT_MAX_SIDE: u32 = 1024;
/// Reference files above this size are skipped unless the pipeline says otherwise.
const DEFAULT_MAX_FILE_MB: f64 = 64.0;
const DEFAULT_NEGATIVES: u32 = 5;
const DEFAULT_OVERGENERATE: f64 = 2.0;
const DEFAULT_K: [u32; 4] = [1, 3, 5, 10];

/// The result of compiling: the pipeline when there was no error, and every diagnostic.
#[derive(Debug)]
pub struct Compiled {
    /// `Some` exactly when `diagnostics` holds no error.
    pub pipeline: Option<Pipeline>,
    /// Errors and warnings, in the order found.
    pub diagnostics: Vec<Diagnostic>,
    /// The files read, for rendering the diagnostics.
    pub sources: Sources,
}

impl Compiled {
    /// Whether any diagnostic is an error.
    #[must_use]
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    /// All diagnostics rendered with snippets, and a summary line.
    #[must_use]
    pub fn render(&self) -> String {
        render_all(&self.diagnostics, &self.sources)
    }
}

/// Compiles the pipeline file at `path`. Relative paths inside it are relative to its folder.
#[must_use]
pub fn compile_file(path: &Path) -> Compiled {
    match fs_err::read_to_string(path) {
        Ok(text) => compile_str(path, &text),
        Err(error) => {
            let mut sources = Sources::default();
            let id = sources.add(path, "");
            let diagnostic = Diagnostic::error(
                format!("cannot read pipeline `{}`", path.display()),
                Span::file(id),
            )
            .with_label(io_reason(&error));
            Compiled {
                pipeline: None,
                diagnostics: vec![diagnostic],
                sources,
            }
        }
    }
}

/// Compiles pipeline text as if read from `path`.
#[must_use]
pub fn compile_str(path: &Path, text: &str) -> Compiled {
    let mut compiler = Compiler::new(path, text);
    let pipeline = compiler.run(text);
    let has_errors = compiler.diagnostics.iter().any(Diagnostic::is_error);
    Compiled {
        pipeline: if has_errors { None } else { pipeline },
        diagnostics: compiler.diagnostics,
        sources: compiler.sources,
    }
}

/// Loads and validates a taxonomy file on its own (for `edir-synth taxonomy FILE`).
#[must_use]
pub fn compile_taxonomy_file(path: &Path) -> (Option<Taxonomy>, Vec<Diagnostic>, Sources) {
    let mut sources = Sources::default();
    let mut diagnostics = Vec::new();
    let taxonomy = load_taxonomy(path, &mut sources, &mut diagnostics, None);
    (taxonomy, diagnostics, sources)
}

fn load_taxonomy(
    path: &Path,
    sources: &mut Sources,
    diagnostics: &mut Vec<Diagnostic>,
    referenced_at: Option<Span>,
) -> Option<Taxonomy> {
    let text = match fs_err::read_to_string(path) {
        Ok(text) => text,
        Err(error) => {
            let span = referenced_at.unwrap_or_else(|| Span::file(sources.add(path, "")));
            diagnostics.push(
                Diagnostic::error(format!("cannot read taxonomy `{}`", path.display()), span)
                    .with_label(io_reason(&error)),
            );
            return None;
        }
    };
    let id = sources.add(path, text.clone());
    match node::parse(&text, id) {
        Ok(root) => taxonomy::compile(&root, diagnostics),
        Err(error) => {
            diagnostics.push(Diagnostic::error(
                format!("invalid YAML: {}", error.message),
                error.span,
            ));
            None
        }
    }
}

fn io_reason(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::NotFound => "file not found".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => error.to_string(),
    }
}

/// Removes `.` and folds `..` lexically, so messages show `prompts/x.md`, not
/// `pipelines/../prompts/x.md`.
fn normalize(path: &Path) -> PathBuf {
    let mut out: Vec<Component<'_>> = Vec::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir | Component::Prefix(_)) => {}
                _ => out.push(component),
            },
            other => out.push(other),
        }
    }
    let joined: PathBuf = out.iter().collect();
    if joined.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        joined
    }
}

/// The shape of what a name in a template's scope provides.
#[derive(Debug, Clone)]
enum Provided {
    /// A value whose fields are known (empty: a scalar, no fields).
    Fields(Vec<String>),
    /// A value whose fields are not known statically (a chat reply without schema properties).
    Opaque,
}

/// One stage as written, with what the compiler has resolved so far.
struct RawStage {
    id: Spanned<String>,
    body: StageSection,
    needs: Vec<usize>,
    /// Some `needs` named no stage (reported); "not upstream" errors would only repeat that.
    unresolved_needs: bool,
}

struct Compiler {
    sources: Sources,
    diagnostics: Vec<Diagnostic>,
    file: SourceId,
    base: PathBuf,
}

impl Compiler {
    fn new(path: &Path, text: &str) -> Self {
        let mut sources = Sources::default();
        let file = sources.add(path, text);
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self {
            sources,
            diagnostics: Vec::new(),
            file,
            base,
        }
    }

    fn error(&mut self, message: impl Into<String>, span: Span) -> &mut Diagnostic {
        self.diagnostics.push(Diagnostic::error(message, span));
        self.diagnostics.last_mut().expect("just pushed")
    }

    fn warning(&mut self, message: impl Into<String>, span: Span) -> &mut Diagnostic {
        self.diagnostics.push(Diagnostic::warning(message, span));
        self.diagnostics.last_mut().expect("just pushed")
    }

    fn error_count(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }

    /// Deserializes one part of the file; an error becomes a diagnostic.
    fn part<'a, T: Deserialize<'a>>(&mut self, node: &'a Node) -> Option<T> {
        match node::from_node(node) {
            Ok(value) => Some(value),
            Err(error) => {
                let help = error.help.clone();
                self.error(error.message, error.span.unwrap_or(node.span))
                    .help = help;
                None
            }
        }
    }

    fn resolve(&self, relative: &str) -> PathBuf {
        normalize(&self.base.join(relative))
    }
    fn run(&mut self, text: &str) -> Option<Pipeline> {
        let root = match node::parse(text, self.file) {
            Ok(root) => root,
            Err(error) => {
                self.error(format!("invalid YAML: {}", error.message), error.span);
                return None;
            }
        };
        let Some(entries) = root.as_map() else {
            self.error(
                format!(
                    "a pipeline must be a mapping of sections, found {}",
                    root.kind_name()
                ),
                root.span,
            )
            .help = Some("start with `name:`, `taxonomy:`, `endpoints:` and `stages:`".into());
            return None;
        };
        let mut sections: HashMap<&'static str, (&Node, &Node)> = HashMap::new();
        for (key, value) in entries {
            let Some(name) = key.as_key() else {
                self.error("section names must be strings", key.span);
                continue;
            };
            if name.starts_with("x-") {
                continue;
            }
            match TOP_LEVEL_KEYS.iter().find(|k| **k == name) {
                Some(known) => {
                    if sections.insert(known, (key, value)).is_some() {
                        self.error(format!("duplicate section `{name}`"), key.span);
                    }
                }
                None => {
                    let help = did_you_mean(&name, TOP_LEVEL_KEYS.iter().copied()).map_or_else(
                        || "keys starting with `x-` are free for YAML anchors".to_string(),
                        |s| format!("did you mean `{s}`?"),
                    );
                    self.error(format!("unknown section `{name}`"), key.span)
                        .labelled("not a pipeline section")
                        .help = Some(help);
                }
            }
        }
        let required = |this: &mut Self, name: &str| {
            this.error(
                format!("missing required section `{name}`"),
                Span {
                    len: 1,
                    ..root.span
                },
            )
            .help = Some(format!("add a top-level `{name}:` section"));
        };

        // name, description, seed, workdir, store
        let name: Option<Spanned<String>> = match sections.get("name") {
            Some((_, v)) => self.part(v),
            None => {
                required(self, "name");
                None
            }
        };
        if let Some(name) = &name {
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && !name.starts_with('.');
            if !valid {
                self.error(format!("invalid pipeline name `{}`", name.value), name.span)
                    .labelled("also the work directory name")
                    .help = Some("use letters, digits, `-`, `_` and `.`".into());
            }
        }
        let description: Option<String> =
            sections.get("description").and_then(|(_, v)| self.part(v));
        let seed: u64 = sections
            .get("seed")
            .and_then(|(_, v)| self.part(v))
            .unwrap_or(0);
        let workdir: Option<String> = sections.get("workdir").and_then(|(_, v)| self.part(v));
        let store: Option<Spanned<String>> = sections.get("store").and_then(|(_, v)| self.part(v));
        if let Some(store) = &store {
            let ok = ["sqlite:", "postgres://", "postgresql://"]
                .iter()
                .any(|p| store.starts_with(p));
            if !ok {
                self.error(
                    format!("unsupported store URL `{}`", store.value),
                    store.span,
                )
                .help = Some("use `sqlite://PATH` or `postgres://USER@HOST:PORT/DB`".into());
            }
        }

        // taxonomy
        let taxonomy = match sections.get("taxonomy") {
            Some((_, v)) => self.part::<Spanned<String>>(v).and_then(|path| {
                let resolved = self.resolve(&path);
                load_taxonomy(
                    &resolved,
                    &mut self.sources,
                    &mut self.diagnostics,
                    Some(path.span),
                )
            }),
            None => {
                required(self, "taxonomy");
                None
            }
        };

        let subcategories =
            self.subcategories(sections.get("subcategories").copied(), taxonomy.as_ref());
        let source = match sections.get("source") {
            Some((_, v)) => self
                .part::<SourceSection>(v)
                .and_then(|s| self.source(s, v.span)),
            None => {
                required(self, "source");
                None
            }
        };
        let quota = match sections.get("quota") {
            Some((_, v)) => self
                .part::<QuotaSection>(v)
                .map(|q| self.quota(q, taxonomy.as_ref())),
            None => {
                required(self, "quota");
                None
            }
        };
        let retry = match sections.get("retry") {
            Some((_, v)) => self
                .part::<Spanned<RetrySection>>(v)
                .map(|r| self.retry(&r, RetryPolicy::default())),
            None => Some(RetryPolicy::default()),
        };
        let mut endpoints = match sections.get("endpoints") {
            Some((_, v)) => self.endpoints(v, retry.unwrap_or_default()),
            None => {
                required(self, "endpoints");
                BTreeMap::new()
            }
        };
        let stages = match sections.get("stages") {
            Some((_, v)) => self.stages(v, &mut endpoints, quota.as_ref()),
            None => {
                required(self, "stages");
                None
            }
        };
        let score = match sections.get("score") {
            Some((_, v)) => self
                .part::<ScoreSection>(v)
                .map(|s| self.score(s, &mut endpoints)),
            None => Some(Score {
                models: Vec::new(),
                k: DEFAULT_K.to_vec(),
            }),
        };
        for endpoint in endpoints.values() {
            if endpoint.1.api == Api::Unused {
                self.warning(
                    format!("endpoint `{}` is not used by any stage", endpoint.1.name),
                    endpoint.0,
                )
                .help = Some("remove it, or name it in a stage or under `score.models`".into());
            }
        }
        if self.error_count() > 0 {
            return None;
        }
        let name = name?;
        let pipeline_path = self.sources.path(self.file).to_path_buf();
        let mut pipeline = Pipeline {
            workdir: workdir.map_or_else(|| Path::new("runs").join(&name.value), PathBuf::from),
            name: name.value,
            description,
            path: pipeline_path,
            text: text.to_string(),
            hash: String::new(),
            seed,
            store: store.map(|s| s.value),
            taxonomy: taxonomy?,
            subcategories: subcategories?,
            source: source?,
            quota: quota?,
            retry: retry?,
            endpoints: endpoints.into_iter().map(|(k, (_, e))| (k, e)).collect(),
            stages: stages?,
            score: score?,
        };
        for stage in &mut pipeline.stages {
            let model = stage
                .op
                .endpoint()
                .and_then(|e| pipeline.endpoints.get(e))
                .map(|e| e.model.clone());
            let canonical = serde_json::json!({"stage": &*stage, "model": model});
            stage.definition_hash = content_hash(canonical.to_string().as_bytes());
        }
        let canonical = serde_json::to_string(&pipeline).unwrap_or_default();
        pipeline.hash = content_hash(canonical.as_bytes());
        Some(pipeline)
    }

    fn subcategories(
        &mut self,
        section: Option<(&Node, &Node)>,
        taxonomy: Option<&Taxonomy>,
    ) -> Option<Vec<String>> {
        let taxonomy = taxonomy?;
        let Some((_, value)) = section else {
            return Some(
                taxonomy
                    .subcategories
                    .iter()
                    .map(|s| s.id.clone())
                    .collect(),
            );
        };
        let names: Vec<Spanned<String>> = self.part(value)?;
        let mut chosen = BTreeSet::new();
        for name in &names {
            match taxonomy.find(name) {
                Some(sub) => {
                    chosen.insert(sub.id.clone());
                }
                None => {
                    let help = taxonomy.suggest(name);
                    self.error(format!("unknown subcategory `{}`", name.value), name.span)
                        .labelled("not in the taxonomy")
                        .help = help;
                }
            }
        }
        if names.is_empty() {
            self.error("`subcategories` is empty", value.span).help =
                Some("list subcategory ids, or remove the key to use the whole taxonomy".into());
        }
        Some(
            taxonomy
                .subcategories
                .iter()
                .filter(|s| chosen.contains(&s.id))
                .map(|s| s.id.clone())
                .collect(),
        )
    }

    fn source(&mut self, section: SourceSection, span: Span) -> Option<Source> {
        let kind = match (section.images, section.manifest) {
            (Some(folder), None) => {
                let path = self.resolve(&folder);
                if !path.is_dir() {
                    self.warning(
                        format!("source folder `{}` does not exist", path.display()),
                        folder.span,
                    )
                    .help = Some("create it, or pass `--source PATH` to `run`".into());
                }
                SourceKind::Folder(path)
            }
            (None, Some(manifest)) => {
                let path = self.resolve(&manifest);
                if !path.is_file() {
                    self.warning(
                        format!("source manifest `{}` does not exist", path.display()),
                        manifest.span,
                    )
                    .help = Some("create it, or pass `--source PATH` to `run`".into());
                }
                SourceKind::Manifest(path)
            }
            (Some(_), Some(manifest)) => {
                self.error(
                    "give either `images` or `manifest`, not both",
                    manifest.span,
                );
                return None;
            }
            (None, None) => {
                self.error(
                    "`source` needs `images: FOLDER` or `manifest: FILE.jsonl`",
                    span,
                );
                return None;
            }
        };
        let max_side = match section.max_side {
            Some(side) if !(16..=16_384).contains(&side.value) => {
                self.error(
                    format!(
                        "`max_side` must be between 16 and 16384 pixels, found {}",
                        side.value
                    ),
                    side.span,
                );
                DEFAULT_MAX_SIDE
            }
            Some(side) => u32::try_from(side.value).unwrap_or(DEFAULT_MAX_SIDE),
            None => DEFAULT_MAX_SIDE,
        };
        let max_file_mb = match section.max_file_mb {
            Some(mb) if mb.value <= 0.0 => {
                self.error("`max_file_mb` must be positive", mb.span);
                DEFAULT_MAX_FILE_MB
            }
            Some(mb) => mb.value,
            None => DEFAULT_MAX_FILE_MB,
        };
        Some(Source {
            kind,
            max_side,
            max_file_mb,
            reuse_per_subcategory: section.reuse_per_subcategory,
        })
    }

    fn positive(&mut self, value: &Spanned<i64>, what: &str) -> u32 {
        if value.value <= 0 {
            self.error(
                format!("{what} must be at least 1, found {}", value.value),
                value.span,
            )
            .labelled(if value.value == 0 { "zero" } else { "negative" });
            return 1;
        }
        u32::try_from(value.value).unwrap_or(u32::MAX)
    }

    fn quota(&mut self, section: QuotaSection, taxonomy: Option<&Taxonomy>) -> Quota {
        let per_subcategory = self.positive(&section.per_subcategory, "`quota.per_subcategory`");
        let mut overrides = BTreeMap::new();
        for (name, value) in &section.overrides {
            let quota = self.positive(value, &format!("the quota of `{}`", name.value));
            match taxonomy.map(|t| (t.find(name), t)) {
                Some((Some(sub), _)) => {
                    overrides.insert(sub.id.clone(), quota);
                }
                Some((None, t)) => {
                    let help = t.suggest(name);
                    self.error(
                        format!("unknown subcategory `{}` in `quota.overrides`", name.value),
                        name.span,
                    )
                    .labelled("not in the taxonomy")
                    .help = help;
                }
                None => {}
            }
        }
        let overgenerate = match section.overgenerate {
            Some(x) if !(x.value >= 1.0 && x.value.is_finite()) => {
                self.error(
                    format!(
                        "`quota.overgenerate` must be at least 1.0, found {}",
                        x.value
                    ),
                    x.span,
                )
                .help = Some(
                    "it bounds drawn samples at `overgenerate x quota` per subcategory".into(),
                );
                DEFAULT_OVERGENERATE
            }
            Some(x) => x.value,
            None => DEFAULT_OVERGENERATE,
        };
        let negatives = match section.negatives {
            Some(n) if n.value < 0 => {
                self.error(
                    format!("`quota.negatives` cannot be negative, found {}", n.value),
                    n.span,
                );
                DEFAULT_NEGATIVES
            }
            Some(n) => u32::try_from(n.value).unwrap_or(u32::MAX),
            None => DEFAULT_NEGATIVES,
        };
        Quota {
            per_subcategory,
            overrides,
            overgenerate,
            negatives,
        }
    }

    fn retry(&mut self, section: &Spanned<RetrySection>, base: RetryPolicy) -> RetryPolicy {
        let mut policy = base;
        if let Some(attempts) = &section.attempts {
            policy.attempts = self.positive(attempts, "`retry.attempts`");
        }
        let millis = |this: &mut Self, value: &Option<Spanned<i64>>, what: &str, into: &mut u64| {
            if let Some(v) = value {
                if v.value < 0 {
                    this.error(format!("`retry.{what}` cannot be negative"), v.span);
                } else {
                    *into = v.value.unsigned_abs();
                }
            }
        };
        millis(
            self,
            &section.initial_backoff_ms,
            "initial_backoff_ms",
            &mut policy.initial_backoff_ms,
        );
        millis(
            self,
            &section.max_backoff_ms,
            "max_backoff_ms",
            &mut policy.max_backoff_ms,
        );
        if policy.max_backoff_ms < policy.initial_backoff_ms {
            let span = section
                .max_backoff_ms
                .as_ref()
                .map_or(section.span, |s| s.span);
            self.error("`retry.max_backoff_ms` is below `initial_backoff_ms`", span);
        }
        if let Some(deadline) = &section.task_deadline_s {
            if deadline.value > 0.0 {
                policy.task_deadline_s = deadline.value;
            } else {
                self.error("`retry.task_deadline_s` must be positive", deadline.span);
            }
        }
        policy
    }

    fn endpoints(&mut self, node: &Node, retry: RetryPolicy) -> BTreeMap<String, (Span, Endpoint)> {
        let mut endpoints = BTreeMap::new();
        let Some(entries) = node.as_map() else {
            self.error(
                format!(
                    "`endpoints` must be a mapping of names to endpoints, found {}",
                    node.kind_name()
                ),
                node.span,
            );
            return endpoints;
        };
        for (key, value) in entries {
            let Some(name) = key.as_key() else {
                self.error("endpoint names must be strings", key.span);
                continue;
            };
            if endpoints.contains_key(&name) {
                self.error(format!("duplicate endpoint `{name}`"), key.span);
                continue;
            }
            if !is_identifier(&name) {
                self.error(format!("invalid endpoint name `{name}`"), key.span)
                    .help =
                    Some("use lower-case letters, digits and `_`, starting with a letter".into());
            }
            let Some(section) = self.part::<EndpointSection>(value) else {
                continue;
            };
            let endpoint = self.endpoint(&name, section, retry);
            endpoints.insert(name, (key.span, endpoint));
        }
        endpoints
    }
    fn endpoint(&mut self, name: &str, section: EndpointSection, retry: RetryPolicy) -> Endpoint {
        if section.model.trim().is_empty() {
            self.error(
                format!("endpoint `{name}` has an empty `model`"),
                section.model.span,
            );
        }
        if section.urls.is_empty() {
            self.error(
                format!("endpoint `{name}` has no `urls`"),
                section.urls.span,
            )
            .help = Some("give at least one base URL, e.g. `http://127.0.0.1:8001/v1`".into());
        }
        for url in &section.urls.value {
            let rest = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"));
            if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
                self.error(format!("invalid URL `{}`", url.value), url.span)
                    .help = Some("use a base URL like `http://127.0.0.1:8001/v1`".into());
            } else if url.contains('@') {
                self.error("URLs must not carry credentials", url.span).help = Some(
                    "put the key in an environment variable and name it in `api_key_env`".into(),
                );
            }
        }
        let max_in_flight = section
            .max_in_flight
            .as_ref()
            .map_or(DEFAULT_MAX_IN_FLIGHT, |v| {
                self.positive(v, "`max_in_flight`")
            });
        let min_in_flight = section
            .min_in_flight
            .as_ref()
            .map_or(1.min(max_in_flight), |v| {
                self.positive(v, "`min_in_flight`")
            });
        if min_in_flight > max_in_flight {
            let span = section
                .min_in_flight
                .as_ref()
                .map_or(section.model.span, |s| s.span);
            self.error(
                format!(
                    "`min_in_flight` ({min_in_flight}) is above `max_in_flight` ({max_in_flight})"
                ),
                span,
            );
        }
        let non_negative = |this: &mut Self,
                            value: &Option<Spanned<f64>>,
                            what: &str,
                            strict: bool|
         -> Option<f64> {
            let v = value.as_ref()?;
            if v.value < 0.0 || (strict && v.value == 0.0) || !v.value.is_finite() {
                this.error(
                    format!(
                        "`{what}` must be {}, found {}",
                        if strict { "positive" } else { "zero or more" },
                        v.value
                    ),
                    v.span,
                );
                return None;
            }
            Some(v.value)
        };
        let timeout_s =
            non_negative(self, &section.timeout_s, "timeout_s", true).unwrap_or(DEFAULT_TIMEOUT_S);
        let gpus = non_negative(self, &section.gpus, "gpus", false);
        let gpu_hour_usd = non_negative(self, &section.gpu_hour_usd, "gpu_hour_usd", false);
        let requests_per_minute = section
            .requests_per_minute
            .as_ref()
            .map(|v| self.positive(v, "`requests_per_minute`"));
        let tokens_per_minute = section
            .tokens_per_minute
            .as_ref()
            .map(|v| self.positive(v, "`tokens_per_minute`"));
        let env_name = |this: &mut Self, value: &Spanned<String>| {
            let ok = !value.is_empty()
                && value
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            if !ok {
                this.error(
                    format!("`{}` is not an environment variable name", value.value),
                    value.span,
                )
                .help =
                    Some("name the variable (e.g. `OPENAI_API_KEY`), never the key itself".into());
            }
        };
        if let Some(v) = &section.url_env {
            env_name(self, v);
        }
        if let Some(v) = &section.api_key_env {
            env_name(self, v);
        }
        let retry = section
            .retry
            .as_ref()
            .map_or(retry, |r| self.retry(r, retry));
        Endpoint {
            name: name.to_string(),
            model: section.model.value,
            urls: section
                .urls
                .value
                .into_iter()
                .map(|u| u.value.trim_end_matches('/').to_string())
                .collect(),
            url_env: section.url_env.map_or_else(
                || format!("EDIR_{}_URL", name.to_ascii_uppercase()),
                |v| v.value,
            ),
            api_key_env: section.api_key_env.map(|v| v.value),
            max_in_flight,
            min_in_flight,
            timeout_s,
            gpus,
            gpu_hour_usd,
            requests_per_minute,
            tokens_per_minute,
            retry,
            query_instruction: section.query_instruction.map(|v| v.value),
            corpus_instruction: section.corpus_instruction.map(|v| v.value),
            api: Api::Unused,
        }
    }

    /// Records that `endpoint` serves `api`; an endpoint serves one API only.
    fn use_endpoint(
        &mut self,
        endpoints: &mut BTreeMap<String, (Span, Endpoint)>,
        name: &Spanned<String>,
        api: Api,
        uses: &mut HashMap<String, (Api, Span)>,
    ) -> bool {
        if !endpoints.contains_key(&name.value) {
            let help = did_you_mean(name, endpoints.keys().map(String::as_str)).map_or_else(
                || "define it under `endpoints`".to_string(),
                |s| format!("did you mean `{s}`?"),
            );
            self.error(format!("unknown endpoint `{}`", name.value), name.span)
                .labelled("not defined under `endpoints`")
                .help = Some(help);
            return false;
        }
        if let Some((previous, first)) = uses.get(&name.value) {
            if *previous != api {
                let (previous, first) = (*previous, *first);
                self.error(
                    format!(
                        "endpoint `{}` is used for {} and for {}",
                        name.value,
                        api_name(previous),
                        api_name(api)
                    ),
                    name.span,
                )
                .help = Some(format!(
                    "an endpoint serves one API; first used at line {}",
                    first.line
                ));
                return false;
            }
        } else {
            uses.insert(name.value.clone(), (api, name.span));
        }
        if let Some((_, endpoint)) = endpoints.get_mut(&name.value) {
            endpoint.api = api;
        }
        true
    }

    fn score(
        &mut self,
        section: ScoreSection,
        endpoints: &mut BTreeMap<String, (Span, Endpoint)>,
    ) -> Score {
        let mut uses: HashMap<String, (Api, Span)> = endpoints
            .iter()
            .filter(|(_, (_, e))| e.api != Api::Unused)
            .map(|(k, (span, e))| (k.clone(), (e.api, *span)))
            .collect();
        let mut models = Vec::new();
        for model in &section.models {
            if self.use_endpoint(endpoints, model, Api::Embeddings, &mut uses) {
                models.push(model.value.clone());
            }
        }
        let k = match section.k {
            Some(k) => {
                if k.is_empty() {
                    self.error("`score.k` is empty", k.span);
                }
                k.value
                    .iter()
                    .map(|v| {
                        u32::try_from(*v)
                            .ok()
                            .filter(|v| *v > 0)
                            .unwrap_or_else(|| {
                                self.error(
                                    format!("`score.k` values must be at least 1, found {v}"),
                                    k.span,
                                );
                                1
                            })
                    })
                    .collect()
            }
            None => DEFAULT_K.to_vec(),
        };
        Score { models, k }
    }
    fn stages(
        &mut self,
        node: &Node,
        endpoints: &mut BTreeMap<String, (Span, Endpoint)>,
        quota: Option<&Quota>,
    ) -> Option<Vec<Stage>> {
        let Some(entries) = node.as_map() else {
            self.error(
                format!(
                    "`stages` must be a mapping of stage names to stages, found {}",
                    node.kind_name()
                ),
                node.span,
            );
            return None;
        };
        let errors_before = self.error_count();
        let mut raw: Vec<RawStage> = Vec::new();
        for (key, value) in entries {
            let Some(id) = key.as_key() else {
                self.error("stage names must be strings", key.span);
                continue;
            };
            let id = Spanned::new(id, key.span);
            if let Some(first) = raw.iter().find(|s| s.id.value == id.value) {
                let line = first.id.span.line;
                self.error(format!("duplicate stage `{}`", id.value), id.span)
                    .help = Some(format!("first defined at line {line}"));
                continue;
            }
            if !is_identifier(&id) {
                self.error(format!("invalid stage name `{}`", id.value), id.span)
                    .help =
                    Some("use lower-case letters, digits and `_`, starting with a letter".into());
            } else if SAMPLE_VARIABLES.iter().any(|(n, _)| *n == id.value)
                || id.value == "item"
                || FILTER_FUNCTIONS.contains(&id.as_str())
                || TEMPLATE_GLOBALS.contains(&id.as_str())
            {
                self.error(format!("stage name `{}` is reserved", id.value), id.span)
                    .labelled("templates use this name for a sample variable")
                    .help = Some("rename the stage".into());
            }
            let Some(body) = self.part::<StageSection>(value) else {
                continue;
            };
            raw.push(RawStage {
                id,
                body,
                needs: Vec::new(),
                unresolved_needs: false,
            });
        }
        if raw.is_empty() && self.error_count() == errors_before {
            self.error("the pipeline has no stages", node.span);
            return None;
        }

        // Operators and endpoints.
        let mut uses: HashMap<String, (Api, Span)> = HashMap::new();
        let mut ops: Vec<Option<Operator>> = Vec::new();
        for stage in &raw {
            let body = &stage.body;
            let given: Vec<(&str, &Spanned<String>)> = [
                ("chat", &body.chat),
                ("judge", &body.judge),
                ("edit", &body.edit),
                ("filter", &body.filter),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
            .collect();
            let op = match given.as_slice() {
                [] => {
                    self.error(format!("stage `{}` has no operator", stage.id.value), stage.id.span).help =
                        Some("add one of `chat: ENDPOINT`, `judge: ENDPOINT`, `edit: ENDPOINT` or `filter: EXPRESSION`".into());
                    None
                }
                [(kind, value)] => match *kind {
                    "filter" => Some(Operator::Filter {
                        expression: value.value.clone(),
                    }),
                    kind => {
                        let api = if kind == "edit" {
                            Api::ImageEdit
                        } else {
                            Api::Chat
                        };
                        self.use_endpoint(endpoints, value, api, &mut uses)
                            .then(|| match kind {
                                "chat" => Operator::Chat {
                                    endpoint: value.value.clone(),
                                },
                                "judge" => Operator::Judge {
                                    endpoint: value.value.clone(),
                                },
                                _ => Operator::Edit {
                                    endpoint: value.value.clone(),
                                    image: ImageRef::Reference,
                                },
                            })
                    }
                },
                [(first, _), (second, value), ..] => {
                    self.error(
                        format!(
                            "stage `{}` has two operators, `{first}` and `{second}`",
                            stage.id.value
                        ),
                        value.span,
                    )
                    .help = Some("a stage does one thing: split it into two stages".into());
                    None
                }
            };
            ops.push(op);
        }

        // needs -> indices.
        let index: HashMap<String, usize> = raw
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.value.clone(), i))
            .collect();
        let names: Vec<String> = raw.iter().map(|s| s.id.value.clone()).collect();
        #[expect(
            clippy::needless_range_loop,
            reason = "`raw[i]` is written after reading others"
        )]
        for i in 0..raw.len() {
            let mut needs = Vec::new();
            let mut unresolved = false;
            for need in &raw[i].body.needs {
                match index.get(&need.value) {
                    Some(&j) if j == i => {
                        self.error(
                            format!("dependency cycle: {0} -> {0}", need.value),
                            need.span,
                        )
                        .labelled("a stage cannot need itself");
                    }
                    Some(&j) => {
                        if needs.contains(&j) {
                            self.warning(
                                format!("`{}` is listed twice in `needs`", need.value),
                                need.span,
                            );
                        } else {
                            needs.push(j);
                        }
                    }
                    None => {
                        unresolved = true;
                        let help = did_you_mean(need, names.iter().map(String::as_str))
                            .map(|s| format!("did you mean `{s}`?"));
                        self.error(
                            format!("unknown stage `{}` in `needs`", need.value),
                            need.span,
                        )
                        .labelled("not defined in this pipeline")
                        .help = help;
                    }
                }
            }
            raw[i].needs = needs;
            raw[i].unresolved_needs = unresolved;
        }
        let has_cycle = self.report_cycles(&raw);
        let ancestors: Vec<BTreeSet<usize>> =
            (0..raw.len()).map(|i| ancestors_of(&raw, i)).collect();

        // Files, schemas, templates, images, fan-out.
        let mut schemas: Vec<Option<Schema>> = Vec::new();
        for (stage, op) in raw.iter().zip(&ops) {
            let schema = match (&stage.body.schema, op) {
                (Some(path), Some(Operator::Edit { .. } | Operator::Filter { .. })) => {
                    self.error(
                        "`schema` applies only to `chat` and `judge` stages",
                        path.span,
                    );
                    None
                }
                (Some(path), _) => self.schema(path),
                (None, Some(Operator::Judge { .. })) => {
                    self.error(
                        format!("judge stage `{}` needs a `schema`", stage.id.value),
                        stage.id.span,
                    )
                    .help = Some(
                        "use `prompts/judge.schema.json`, which asks for `verdict` and `reason`"
                            .into(),
                    );
                    None
                }
                (None, _) => None,
            };
            if let (Some(schema), Some(Operator::Judge { .. })) = (&schema, op) {
                self.check_judge_schema(
                    schema,
                    stage.body.schema.as_ref().map_or(stage.id.span, |s| s.span),
                );
            }
            schemas.push(schema);
        }
        let outputs: Vec<Provided> = raw
            .iter()
            .zip(&ops)
            .zip(&schemas)
            .map(|((stage, op), schema)| {
                if stage.body.schema.is_some() && schema.is_none() {
                    // The schema failed to load and was reported; do not guess its fields.
                    return Provided::Opaque;
                }
                output_shape(op.as_ref(), schema.as_ref(), stage.body.for_each.is_some())
            })
            .collect();

        let mut stages = Vec::new();
        for (i, stage) in raw.iter().enumerate() {
            let Some(mut op) = ops[i].clone() else {
                continue;
            };
            let body = &stage.body;
            let scope = Scope {
                raw: &raw,
                ops: &ops,
                outputs: &outputs,
                ancestors: &ancestors[i],
                stage: i,
                fan_out: body.for_each.is_some(),
            };
            let kind = op.kind();
            let (prompt, system) = match &op {
                Operator::Filter { expression } => {
                    if let Some(p) = body
                        .prompt
                        .as_ref()
                        .or(body.template.as_ref())
                        .or(body.system.as_ref())
                    {
                        self.error("a `filter` stage takes no prompt", p.span);
                    }
                    let span = body.filter.as_ref().map_or(stage.id.span, |f| f.span);
                    match expression_variables(&stage.id, expression) {
                        Ok(vars) => {
                            for var in vars {
                                self.check_variable(&scope, &var, span, true);
                            }
                        }
                        Err(error) => {
                            self.error(
                                format!(
                                    "invalid filter expression: {}",
                                    prompt_error_message(&error)
                                ),
                                span,
                            );
                        }
                    }
                    (None, None)
                }
                _ => {
                    let prompt = match (&body.prompt, &body.template) {
                        (Some(path), None) => self.template_file(path, &scope),
                        (None, Some(text)) => self.template_inline(&stage.id, text, &scope),
                        (Some(_), Some(text)) => {
                            self.error("give either `prompt` (a file) or `template` (inline text), not both", text.span);
                            None
                        }
                        (None, None) => {
                            self.error(format!("{kind} stage `{}` needs a `prompt` file or an inline `template`", stage.id.value), stage.id.span);
                            None
                        }
                    };
                    let system = body.system.as_ref().and_then(|path| {
                        if kind == "edit" {
                            self.error(
                                "`system` applies only to `chat` and `judge` stages",
                                path.span,
                            );
                            None
                        } else {
                            self.template_file(path, &scope)
                        }
                    });
                    (prompt, system)
                }
            };
            let mut images = Vec::new();
            if !body.images.is_empty()
                && !matches!(op, Operator::Chat { .. } | Operator::Judge { .. })
            {
                self.error(
                    "`images` applies only to `chat` and `judge` stages",
                    body.images[0].span,
                )
                .help = Some("edit stages take one input image: `image: reference`".into());
            } else {
                for reference in &body.images {
                    if let Some(image) = self.image_ref(&scope, reference, true) {
                        images.push(image);
                    }
                }
            }
            if let Operator::Edit { image, .. } = &mut op {
                if let Some(reference) = &body.image
                    && let Some(resolved) = self.image_ref(&scope, reference, false)
                {
                    *image = resolved;
                }
            } else if let Some(reference) = &body.image {
                self.error("`image` applies only to `edit` stages", reference.span)
                    .help = Some("chat and judge stages take a list: `images: [reference]`".into());
            }
            let for_each = body.for_each.as_ref().and_then(|f| {
                if matches!(op, Operator::Edit { .. }) {
                    self.for_each(&scope, &schemas, f)
                } else {
                    self.error("`for_each` applies only to `edit` stages", f.span);
                    None
                }
            });
            if for_each.is_some() && quota.is_some_and(|q| q.negatives == 0) {
                self.warning(
                    format!(
                        "`quota.negatives` is 0, so fan-out stage `{}` makes nothing",
                        stage.id.value
                    ),
                    stage.id.span,
                );
            }
            let sampling = self.sampling(body.sampling.as_ref(), kind);
            if body.reason.is_some() && kind != "filter" && kind != "judge" {
                self.warning("`reason` is only used by `filter` stages", stage.id.span);
            }
            stages.push(Stage {
                id: stage.id.value.clone(),
                op,
                needs: stage
                    .needs
                    .iter()
                    .map(|&j| raw[j].id.value.clone())
                    .collect(),
                prompt,
                system,
                schema: schemas[i].clone(),
                images,
                for_each,
                sampling,
                reason: body.reason.clone(),
                definition_hash: String::new(),
            });
        }
        if has_cycle || self.error_count() > errors_before {
            return None;
        }
        Some(topological(stages))
    }

    fn report_cycles(&mut self, raw: &[RawStage]) -> bool {
        // Iterative DFS with colours; each back edge closes one cycle, reported once.
        let n = raw.len();
        let mut colour = vec![0u8; n]; // 0 new, 1 on stack, 2 done
        let mut reported: BTreeSet<Vec<usize>> = BTreeSet::new();
        let mut found = false;
        for start in 0..n {
            if colour[start] != 0 {
                continue;
            }
            let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
            colour[start] = 1;
            while let Some(&mut (node, ref mut next)) = stack.last_mut() {
                if let Some(&child) = raw[node].needs.get(*next) {
                    *next += 1;
                    match colour[child] {
                        0 => {
                            colour[child] = 1;
                            stack.push((child, 0));
                        }
                        1 => {
                            let from = stack.iter().position(|(s, _)| *s == child).unwrap_or(0);
                            let mut cycle: Vec<usize> =
                                stack[from..].iter().map(|(s, _)| *s).collect();
                            let mut key = cycle.clone();
                            key.sort_unstable();
                            if reported.insert(key) {
                                found = true;
                                cycle.push(child);
                                let path: Vec<&str> =
                                    cycle.iter().map(|&s| raw[s].id.value.as_str()).collect();
                                let span = raw[node]
                                    .body
                                    .needs
                                    .iter()
                                    .find(|need| need.value == raw[child].id.value)
                                    .map_or(raw[node].id.span, |need| need.span);
                                self.error(
                                    format!("dependency cycle: {}", path.join(" -> ")),
                                    span,
                                )
                                .labelled("this dependency closes the cycle")
                                .help = Some(
                                    "stages run in dependency order; remove one of these `needs`"
                                        .into(),
                                );
                            }
                        }
                        _ => {}
                    }
                } else {
                    colour[node] = 2;
                    stack.pop();
                }
            }
        }
        found
    }

    fn read_file(
        &mut self,
        path: &Spanned<String>,
        what: &str,
    ) -> Option<(PathBuf, SourceId, String)> {
        let resolved = self.resolve(path);
        match fs_err::read_to_string(&resolved) {
            Ok(text) => {
                let id = self.sources.add(&resolved, text.clone());
                Some((resolved, id, text))
            }
            Err(error) => {
                self.error(
                    format!("cannot read {what} `{}`", resolved.display()),
                    path.span,
                )
                .labelled(io_reason(&error))
                .help = Some(format!(
                    "paths are relative to the pipeline file's folder `{}`",
                    self.base.display()
                ));
                None
            }
        }
    }

    fn template_file(&mut self, path: &Spanned<String>, scope: &Scope<'_>) -> Option<Prompt> {
        let (resolved, id, text) = self.read_file(path, "prompt template")?;
        let template = match Template::inline(resolved.display().to_string(), text) {
            Ok(t) => t,
            Err(error) => {
                let line = match &error {
                    edir_prompt::PromptError::Syntax { line, .. } => to_u32(*line),
                    _ => 1,
                };
                self.error(
                    format!("invalid template: {}", prompt_error_message(&error)),
                    Span {
                        source: id,
                        line,
                        column: 1,
                        len: 1,
                    },
                );
                return None;
            }
        };
        for usage in template.variable_uses() {
            let span = match (usage.line, usage.column) {
                (Some(line), Some(column)) => Span {
                    source: id,
                    line: to_u32(line),
                    column: to_u32(column),
                    len: to_u32(usage.path.chars().count()),
                },
                _ => path.span,
            };
            self.check_variable(scope, &usage.path, span, false);
        }
        Some(Prompt {
            path: Some(resolved),
            hash: template.hash().to_string(),
            template: Arc::new(template),
        })
    }

    fn template_inline(
        &mut self,
        stage: &str,
        text: &Spanned<String>,
        scope: &Scope<'_>,
    ) -> Option<Prompt> {
        let template =
            match Template::inline(format!("stages.{stage}.template"), text.value.clone()) {
                Ok(t) => t,
                Err(error) => {
                    self.error(
                        format!("invalid template: {}", prompt_error_message(&error)),
                        text.span,
                    );
                    return None;
                }
            };
        for var in template.variables() {
            self.check_variable(scope, var, text.span, false);
        }
        Some(Prompt {
            path: None,
            hash: template.hash().to_string(),
            template: Arc::new(template),
        })
    }

    /// Checks that a dotted variable path is provided by the sample or an upstream stage.
    fn check_variable(&mut self, scope: &Scope<'_>, path: &str, span: Span, is_filter: bool) {
        let mut parts = path.split('.');
        let head = parts.next().unwrap_or_default();
        let field = parts.next();
        if TEMPLATE_GLOBALS.contains(&head) || (is_filter && FILTER_FUNCTIONS.contains(&head)) {
            return;
        }
        if head == "item" && scope.fan_out {
            return;
        }
        let provided = if let Some((_, fields)) = SAMPLE_VARIABLES.iter().find(|(n, _)| *n == head)
        {
            Some(Provided::Fields(
                fields.iter().map(ToString::to_string).collect(),
            ))
        } else if let Some(j) = scope.raw.iter().position(|s| s.id.value == head) {
            if !scope.ancestors.contains(&j) {
                if scope.raw[scope.stage].unresolved_needs {
                    return;
                }
                let me = &scope.raw[scope.stage].id.value;
                self.error(
                    format!("`{head}` is a stage, but not upstream of `{me}`"),
                    span,
                )
                .labelled("not in `needs`")
                .help = Some(format!("add `{head}` to the `needs` of `{me}`"));
                return;
            }
            Some(scope.outputs[j].clone())
        } else {
            None
        };
        let Some(provided) = provided else {
            let mut candidates: Vec<&str> = SAMPLE_VARIABLES.iter().map(|(n, _)| *n).collect();
            candidates.extend(
                scope
                    .ancestors
                    .iter()
                    .map(|&j| scope.raw[j].id.value.as_str()),
            );
            if scope.fan_out {
                candidates.push("item");
            }
            let help = did_you_mean(head, candidates.iter().copied()).map_or_else(
                || {
                    format!(
                        "available here: {}",
                        candidates
                            .iter()
                            .map(|c| format!("`{c}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
                |s| format!("did you mean `{s}`?"),
            );
            let what = if head == "item" {
                "`item` is only defined in `for_each` stages".to_string()
            } else {
                format!("no upstream stage or sample variable provides `{head}`")
            };
            self.error(format!("unknown template variable `{path}`"), span)
                .labelled(what)
                .help = Some(help);
            return;
        };
        if let (Some(field), Provided::Fields(fields)) = (field, &provided)
            && !fields.iter().any(|f| f == field)
        {
            {
                let known = if fields.is_empty() {
                    "it has no fields".to_string()
                } else {
                    format!(
                        "its fields: {}",
                        fields
                            .iter()
                            .map(|f| format!("`{f}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                let help = did_you_mean(field, fields.iter().map(String::as_str))
                    .map_or(known, |s| format!("did you mean `{head}.{s}`?"));
                self.error(format!("`{head}` has no field `{field}`"), span)
                    .labelled(format!("used as `{path}`"))
                    .help = Some(help);
            }
        }
    }

    fn image_ref(
        &mut self,
        scope: &Scope<'_>,
        reference: &Spanned<String>,
        allow_many: bool,
    ) -> Option<ImageRef> {
        if reference.value == "reference" {
            return Some(ImageRef::Reference);
        }
        let hint = if allow_many {
            "use `reference`, `STAGE.image` or `STAGE.images` of an upstream edit stage"
        } else {
            "use `reference` or `STAGE.image` of an upstream edit stage"
        };
        let Some((stage, field)) = reference.split_once('.') else {
            self.error(
                format!("unknown image `{}`", reference.value),
                reference.span,
            )
            .help = Some(hint.into());
            return None;
        };
        let Some(j) = scope.raw.iter().position(|s| s.id.value == stage) else {
            let help = did_you_mean(stage, scope.raw.iter().map(|s| s.id.value.as_str()))
                .map_or_else(|| hint.to_string(), |s| format!("did you mean `{s}`?"));
            self.error(
                format!("unknown stage `{stage}` in image `{}`", reference.value),
                reference.span,
            )
            .help = Some(help);
            return None;
        };
        if !scope.ancestors.contains(&j) {
            if scope.raw[scope.stage].unresolved_needs {
                return None;
            }
            let me = &scope.raw[scope.stage].id.value;
            self.error(
                format!("`{stage}` is not upstream of `{me}`"),
                reference.span,
            )
            .help = Some(format!("add `{stage}` to the `needs` of `{me}`"));
            return None;
        }
        // A stage whose operator failed was already reported.
        scope.ops[j].as_ref()?;
        if !matches!(scope.ops[j], Some(Operator::Edit { .. })) {
            self.error(
                format!("`{stage}` is not an edit stage, so it has no images"),
                reference.span,
            )
            .help = Some(hint.into());
            return None;
        }
        let fan_out = scope.raw[j].body.for_each.is_some();
        match (field, fan_out) {
            ("image", false) => Some(ImageRef::Stage {
                stage: stage.to_string(),
                many: false,
            }),
            ("images", true) if allow_many => Some(ImageRef::Stage {
                stage: stage.to_string(),
                many: true,
            }),
            ("images", true) => {
                self.error(
                    format!(
                        "`{}` is a list of images; an edit takes one",
                        reference.value
                    ),
                    reference.span,
                );
                None
            }
            ("image", true) => {
                self.error(
                    format!("`{stage}` makes several images (it has `for_each`)"),
                    reference.span,
                )
                .help = Some(format!("use `{stage}.images`"));
                None
            }
            ("images", false) => {
                self.error(format!("`{stage}` makes one image"), reference.span)
                    .help = Some(format!("use `{stage}.image`"));
                None
            }
            _ => {
                self.error(
                    format!("unknown image `{}`", reference.value),
                    reference.span,
                )
                .help = Some(hint.into());
                None
            }
        }
    }

    fn for_each(
        &mut self,
        scope: &Scope<'_>,
        schemas: &[Option<Schema>],
        value: &Spanned<String>,
    ) -> Option<FieldRef> {
        let Some((stage, field)) = value.split_once('.') else {
            self.error(
                format!(
                    "`for_each` must name a list field of an upstream stage, found `{}`",
                    value.value
                ),
                value.span,
            )
            .help = Some("e.g. `for_each: instruct.extra_changes`".into());
            return None;
        };
        let Some(j) = scope.raw.iter().position(|s| s.id.value == stage) else {
            let help = did_you_mean(stage, scope.raw.iter().map(|s| s.id.value.as_str()))
                .map(|s| format!("did you mean `{s}`?"));
            self.error(format!("unknown stage `{stage}` in `for_each`"), value.span)
                .help = help;
            return None;
        };
        if !scope.ancestors.contains(&j) {
            if scope.raw[scope.stage].unresolved_needs {
                return None;
            }
            let me = &scope.raw[scope.stage].id.value;
            self.error(format!("`{stage}` is not upstream of `{me}`"), value.span)
                .help = Some(format!("add `{stage}` to the `needs` of `{me}`"));
            return None;
        }
        let Some(schema) = &schemas[j] else {
            self.error(
                format!(
                    "`for_each` needs a list field of a stage with a schema; `{stage}` has none"
                ),
                value.span,
            );
            return None;
        };
        let property = schema.value.get("properties").and_then(|p| p.get(field));
        match property
            .and_then(|p| p.get("type"))
            .and_then(|t| t.as_str())
        {
            Some("array") => Some(FieldRef {
                stage: stage.to_string(),
                field: field.to_string(),
            }),
            Some(other) => {
                self.error(
                    format!("`{stage}.{field}` is {other} in its schema, not a list"),
                    value.span,
                );
                None
            }
            None if property.is_none() => {
                let fields: Vec<&str> = schema
                    .value
                    .get("properties")
                    .and_then(|p| p.as_object())
                    .map(|o| o.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                let help = did_you_mean(field, fields.iter().copied())
                    .map(|s| format!("did you mean `{stage}.{s}`?"));
                self.error(
                    format!("`{stage}` has no field `{field}` in its schema"),
                    value.span,
                )
                .help = help;
                None
            }
            None => {
                self.error(format!("`{stage}.{field}` has no `type` in its schema; `for_each` needs `\"type\": \"array\"`"), value.span);
                None
            }
        }
    }

    fn schema(&mut self, path: &Spanned<String>) -> Option<Schema> {
        let (resolved, id, text) = self.read_file(path, "JSON schema")?;
        let value: serde_json::Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(error) => {
                let span = Span {
                    source: id,
                    line: to_u32(error.line()),
                    column: to_u32(error.column()),
                    len: 1,
                };
                let message = error.to_string();
                let message = message
                    .split(" at line ")
                    .next()
                    .unwrap_or(&message)
                    .to_string();
                self.error(format!("invalid JSON in schema: {message}"), span);
                return None;
            }
        };
        if let Err(error) = jsonschema::meta::validate(&value) {
            let pointer = error.instance_path().to_string();
            let last = pointer.rsplit('/').find(|s| !s.is_empty()).unwrap_or("");
            let span = locate_pointer(&text, &pointer).map_or(
                Span {
                    source: id,
                    line: 1,
                    column: 1,
                    len: 1,
                },
                |offset| {
                    let (line, column) = self.sources.position_of_offset(id, offset);
                    Span {
                        source: id,
                        line,
                        column,
                        len: to_u32(last.len() + 2),
                    }
                },
            );
            let at = if pointer.is_empty() {
                String::new()
            } else {
                format!(" at `{pointer}`")
            };
            self.error(format!("invalid JSON schema{at}: {error}"), span);
            return None;
        }
        if value.get("type").and_then(|t| t.as_str()) != Some("object") {
            self.error(
                "a reply schema must describe an object (`\"type\": \"object\"`)",
                Span {
                    source: id,
                    line: 1,
                    column: 1,
                    len: 1,
                },
            )
            .help = Some("model replies are JSON objects; put fields under `properties`".into());
            return None;
        }
        let name = value.get("title").and_then(|t| t.as_str()).map_or_else(
            || {
                resolved
                    .file_name()
                    .and_then(|f| f.to_str())
                    .and_then(|f| f.split('.').next())
                    .unwrap_or("reply")
                    .to_string()
            },
            ToString::to_string,
        );
        Some(Schema {
            path: resolved,
            name,
            hash: content_hash(text.as_bytes()),
            value,
        })
    }

    fn check_judge_schema(&mut self, schema: &Schema, span: Span) {
        let properties = schema.value.get("properties").and_then(|p| p.as_object());
        let required: Vec<&str> = schema
            .value
            .get("required")
            .and_then(|r| r.as_array())
            .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        for field in ["verdict", "reason"] {
            if !properties.is_some_and(|p| p.contains_key(field)) || !required.contains(&field) {
                self.error(
                    format!(
                        "a judge schema must require a `{field}` property; `{}` does not",
                        schema.path.display()
                    ),
                    span,
                )
                .help = Some(
                    "the verdict (`accept` or `reject`) decides the sample; the reason is recorded"
                        .into(),
                );
            }
        }
        let verdicts = properties
            .and_then(|p| p.get("verdict"))
            .and_then(|v| v.get("enum"))
            .and_then(|e| e.as_array());
        if let Some(verdicts) = verdicts {
            for needed in ["accept", "reject"] {
                if !verdicts.iter().any(|v| v.as_str() == Some(needed)) {
                    self.error(
                        format!("the judge schema's `verdict` must allow `{needed}`"),
                        span,
                    );
                }
            }
        }
    }

    fn sampling(&mut self, section: Option<&SamplingSection>, kind: &str) -> Sampling {
        let Some(s) = section else {
            return Sampling::default();
        };
        let chat_only: [(&str, Option<Span>); 5] = [
            ("temperature", s.temperature.as_ref().map(|v| v.span)),
            ("top_p", s.top_p.as_ref().map(|v| v.span)),
            ("max_tokens", s.max_tokens.as_ref().map(|v| v.span)),
            (
                "presence_penalty",
                s.presence_penalty.as_ref().map(|v| v.span),
            ),
            (
                "repetition_penalty",
                s.repetition_penalty.as_ref().map(|v| v.span),
            ),
        ];
        let edit_only: [(&str, Option<Span>); 3] = [
            ("steps", s.steps.as_ref().map(|v| v.span)),
            ("guidance", s.guidance.as_ref().map(|v| v.span)),
            ("size", s.size.as_ref().map(|v| v.span)),
        ];
        let (wrong, right): (&[(&str, Option<Span>)], &str) = if kind == "edit" {
            (&chat_only, "chat and judge")
        } else {
            (&edit_only, "edit")
        };
        for (name, span) in wrong {
            if let Some(span) = span {
                self.error(
                    format!("`sampling.{name}` applies only to {right} stages"),
                    *span,
                );
            }
        }
        let range = |this: &mut Self,
                     v: &Option<Spanned<f64>>,
                     name: &str,
                     lo: f64,
                     hi: f64|
         -> Option<f64> {
            let v = v.as_ref()?;
            if !(lo..=hi).contains(&v.value) {
                this.error(
                    format!(
                        "`sampling.{name}` must be between {lo} and {hi}, found {}",
                        v.value
                    ),
                    v.span,
                );
            }
            Some(v.value)
        };
        let temperature = range(self, &s.temperature, "temperature", 0.0, 2.0);
        let top_p = range(self, &s.top_p, "top_p", 0.0, 1.0);
        let presence_penalty = range(self, &s.presence_penalty, "presence_penalty", -2.0, 2.0);
        let repetition_penalty =
            range(self, &s.repetition_penalty, "repetition_penalty", 0.0, 10.0);
        let guidance = range(self, &s.guidance, "guidance", 0.0, 100.0);
        let max_tokens = s
            .max_tokens
            .as_ref()
            .map(|v| self.positive(v, "`sampling.max_tokens`"));
        let steps = s
            .steps
            .as_ref()
            .map(|v| self.positive(v, "`sampling.steps`"));
        if let Some(size) = &s.size {
            let ok = size.split_once('x').is_some_and(|(w, h)| {
                w.parse::<u32>().is_ok_and(|w| w > 0) && h.parse::<u32>().is_ok_and(|h| h > 0)
            });
            if !ok {
                self.error(
                    format!(
                        "`sampling.size` must be `WIDTHxHEIGHT`, found `{}`",
                        size.value
                    ),
                    size.span,
                );
            }
        }
        Sampling {
            temperature,
            top_p,
            max_tokens,
            presence_penalty,
            repetition_penalty,
            thinking: s.thinking,
            steps,
            guidance,
            size: s.size.as_ref().map(|v| v.value.clone()),
            negative_prompt: s.negative_prompt.clone(),
        }
    }
}

/// What a template or expression of one stage can see.
struct Scope<'a> {
    raw: &'a [RawStage],
    ops: &'a [Option<Operator>],
    outputs: &'a [Provided],
    ancestors: &'a BTreeSet<usize>,
    stage: usize,
    fan_out: bool,
}

fn output_shape(op: Option<&Operator>, schema: Option<&Schema>, fan_out: bool) -> Provided {
    let fields = |names: &[&str]| Provided::Fields(names.iter().map(ToString::to_string).collect());
    match op {
        Some(Operator::Chat { .. } | Operator::Judge { .. }) => match schema {
            Some(schema) => match schema.value.get("properties").and_then(|p| p.as_object()) {
                Some(properties) => Provided::Fields(properties.keys().cloned().collect()),
                None => Provided::Opaque,
            },
            None => fields(&["text", "reasoning"]),
        },
        Some(Operator::Edit { .. }) if fan_out => fields(&["images", "items"]),
        Some(Operator::Edit { .. }) => fields(&["image"]),
        Some(Operator::Filter { .. }) => fields(&["passed", "value"]),
        None => Provided::Opaque,
    }
}

fn ancestors_of(raw: &[RawStage], i: usize) -> BTreeSet<usize> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<usize> = raw[i].needs.clone();
    while let Some(j) = todo.pop() {
        if j != i && seen.insert(j) {
            todo.extend(raw[j].needs.iter().copied());
        }
    }
    seen
}

/// Kahn's algorithm, taking ready stages in file order.
fn topological(stages: Vec<Stage>) -> Vec<Stage> {
    let mut remaining: Vec<Option<Stage>> = stages.into_iter().map(Some).collect();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut order = Vec::with_capacity(remaining.len());
    while order.len() < remaining.len() {
        let next = remaining.iter().position(|s| {
            s.as_ref()
                .is_some_and(|s| s.needs.iter().all(|n| done.contains(n)))
        });
        let Some(next) = next else { break };
        let stage = remaining[next].take().expect("position found a stage");
        done.insert(stage.id.clone());
        order.push(stage);
    }
    order
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn api_name(api: Api) -> &'static str {
    match api {
        Api::Chat => "chat",
        Api::ImageEdit => "image edits",
        Api::Embeddings => "embeddings",
        Api::Unused => "nothing",
    }
}

fn prompt_error_message(error: &edir_prompt::PromptError) -> String {
    match error {
        edir_prompt::PromptError::Syntax { message, .. }
        | edir_prompt::PromptError::Render { message, .. } => message.clone(),
        other @ edir_prompt::PromptError::Read { .. } => other.to_string(),
    }
}

/// Byte offset of the last key of a JSON pointer (`/properties/query/type`) in JSON text,
/// found by searching each key after the previous one (good enough for hand-written schemas).
fn locate_pointer(text: &str, pointer: &str) -> Option<usize> {
    let mut from = 0;
    let mut found = None;
    for key in pointer
        .split('/')
        .filter(|k| !k.is_empty() && k.parse::<usize>().is_err())
    {
        let at = from + text[from..].find(&format!("\"{key}\""))?;
        found = Some(at);
        from = at + key.len() + 2;
    }
    found
}
