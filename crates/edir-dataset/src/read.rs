//! Reading and validating an EDIR-layout benchmark.
//!
//! Invariants of a [`Benchmark`]: query and corpus ids are unique; every query has exactly one
//! instance; every positive and negative is a corpus id; `pos` is not empty. Queries keep the
//! order of `queries.jsonl` and corpus items the order of `corpus.jsonl` (vector files follow
//! these orders).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::images::Images;

/// A query: a reference image and a modification text.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Query {
    /// `query_0`, ...
    pub id: String,
    /// The reference image file.
    pub image: String,
    /// The modification text.
    pub text: String,
    /// `{"subcategory": "color", "category": "attribute", ...}`.
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

impl Query {
    /// `metadata.subcategory`, or `unknown`.
    #[must_use]
    pub fn subcategory(&self) -> &str {
        self.metadata
            .get("subcategory")
            .and_then(|v| v.as_str())
            .unwrap_or("unknown")
    }

    /// `metadata.category` when present.
    #[must_use]
    pub fn category(&self) -> Option<&str> {
        self.metadata.get("category").and_then(|v| v.as_str())
    }
}

/// A corpus image.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CorpusItem {
    /// Its id (the file name in the release).
    pub id: String,
    /// The image file.
    pub image: String,
}

/// Which corpus items answer a query.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Instance {
    /// The query id.
    pub qid: String,
    /// Relevant corpus ids.
    pub pos: Vec<String>,
    /// Hard negatives (corpus ids).
    #[serde(default)]
    pub neg: Vec<String>,
}

/// One problem found in a benchmark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file at fault.
    pub file: PathBuf,
    /// 1-based line, when it is about a line.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Why a benchmark cannot be used: every problem found (up to a limit).
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid benchmark `{}`: {} problem{}\n{}", dir.display(), problems.len(), if problems.len() == 1 { "" } else { "s" }, problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
pub struct DatasetError {
    /// The benchmark folder.
    pub dir: PathBuf,
    /// What is wrong.
    pub problems: Vec<Problem>,
}

/// Problems reported at most (a broken file would otherwise list every line).
const MAX_PROBLEMS: usize = 20;

/// A loaded, validated benchmark.
#[derive(Debug, Clone)]
pub struct Benchmark {
    /// The folder.
    pub dir: PathBuf,
    /// Where images are: a folder or a (split) tar archive.
    pub images: Images,
    /// Queries in file order.
    pub queries: Vec<Query>,
    /// Corpus in file order.
    pub corpus: Vec<CorpusItem>,
    /// Instances, in query order.
    pub instances: Vec<Instance>,
}

struct Collector {
    problems: Vec<Problem>,
}

impl Collector {
    fn push(&mut self, file: &Path, line: Option<usize>, message: impl Into<String>) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(Problem {
                file: file.to_path_buf(),
                line,
                message: message.into(),
            });
        }
    }
}

fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path, out: &mut Collector) -> Vec<(usize, T)> {
    let text = match fs_err::read_to_string(path) {
        Ok(text) => text,
        Err(error) => {
            let reason = if error.kind() == std::io::ErrorKind::NotFound {
                "file not found".to_string()
            } else {
                error.to_string()
            };
            out.push(path, None, reason);
            return Vec::new();
        }
    };
    let mut records = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<T>(line) {
            Ok(record) => records.push((index + 1, record)),
            Err(error) => {
                let message = error.to_string();
                let message = message.split(" at line ").next().unwrap_or(&message);
                out.push(
                    path,
                    Some(index + 1),
                    format!("malformed record: {message}"),
                );
            }
        }
    }
    records
}

impl Benchmark {
    /// Reads `dir` (images in `images`, default `dir/images` or else `dir`), validating.
    /// With `check_images`, every referenced image must exist.
    ///
    /// # Errors
    /// [`DatasetError`] listing the problems, each with its file and line.
    pub fn read(
        dir: &Path,
        images: Option<&Path>,
        check_images: bool,
    ) -> Result<Self, DatasetError> {
        let mut out = Collector {
            problems: Vec::new(),
        };
        let (queries_path, corpus_path, instances_path) = (
            dir.join("queries.jsonl"),
            dir.join("corpus.jsonl"),
            dir.join("instances.jsonl"),
        );
        let queries: Vec<(usize, Query)> = read_jsonl(&queries_path, &mut out);
        let corpus: Vec<(usize, CorpusItem)> = read_jsonl(&corpus_path, &mut out);
        let instances: Vec<(usize, Instance)> = read_jsonl(&instances_path, &mut out);
        let images = match Images::locate(dir, images) {
            Ok(images) => images,
            Err(message) => {
                out.push(images.unwrap_or(dir), None, message);
                Images::Folder(dir.to_path_buf())
            }
        };

        let mut query_ids: HashMap<&str, usize> = HashMap::new();
        for (line, query) in &queries {
            if let Some(first) = query_ids.insert(&query.id, *line) {
                out.push(
                    &queries_path,
                    Some(*line),
                    format!("duplicate query id `{}` (first on line {first})", query.id),
                );
            }
        }
        let mut corpus_ids: HashMap<&str, usize> = HashMap::new();
        for (line, item) in &corpus {
            if let Some(first) = corpus_ids.insert(&item.id, *line) {
                out.push(
                    &corpus_path,
                    Some(*line),
                    format!("duplicate corpus id `{}` (first on line {first})", item.id),
                );
            }
        }
        let mut instance_of: HashMap<&str, &Instance> = HashMap::new();
        for (line, instance) in &instances {
            if !query_ids.contains_key(instance.qid.as_str()) {
                out.push(
                    &instances_path,
                    Some(*line),
                    format!("instance for unknown query `{}`", instance.qid),
                );
            }
            if instance_of.insert(&instance.qid, instance).is_some() {
                out.push(
                    &instances_path,
                    Some(*line),
                    format!("second instance for query `{}`", instance.qid),
                );
            }
            if instance.pos.is_empty() {
                out.push(
                    &instances_path,
                    Some(*line),
                    format!("query `{}` has no positive", instance.qid),
                );
            }
            for (what, ids) in [("positive", &instance.pos), ("negative", &instance.neg)] {
                for id in ids {
                    if !corpus_ids.contains_key(id.as_str()) {
                        out.push(
                            &instances_path,
                            Some(*line),
                            format!(
                                "{what} `{id}` of query `{}` is not in the corpus",
                                instance.qid
                            ),
                        );
                    }
                }
            }
        }
        for (line, query) in &queries {
            if !instance_of.contains_key(query.id.as_str()) {
                out.push(
                    &queries_path,
                    Some(*line),
                    format!("query `{}` has no instance in `instances.jsonl`", query.id),
                );
            }
        }
        if check_images {
            let mut seen = HashSet::new();
            let referenced = queries
                .iter()
                .map(|(l, q)| (&queries_path, *l, &q.image))
                .chain(corpus.iter().map(|(l, c)| (&corpus_path, *l, &c.image)));
            for (file, line, image) in referenced {
                if seen.insert(image.as_str()) && !images.contains(image) {
                    out.push(
                        file,
                        Some(line),
                        format!("image `{image}` not found in {}", images.describe()),
                    );
                }
            }
        }
        if queries.is_empty() && out.problems.is_empty() {
            out.push(&queries_path, None, "no queries");
        }
        if !out.problems.is_empty() {
            return Err(DatasetError {
                dir: dir.to_path_buf(),
                problems: out.problems,
            });
        }
        let mut ordered = Vec::with_capacity(queries.len());
        for (_, query) in &queries {
            ordered.push(instance_of[query.id.as_str()].clone());
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            images,
            queries: queries.into_iter().map(|(_, q)| q).collect(),
            corpus: corpus.into_iter().map(|(_, c)| c).collect(),
            instances: ordered,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, queries: &str, corpus: &str, instances: &str) {
        std::fs::write(dir.join("queries.jsonl"), queries).unwrap();
        std::fs::write(dir.join("corpus.jsonl"), corpus).unwrap();
        std::fs::write(dir.join("instances.jsonl"), instances).unwrap();
    }

    const Q: &str = "{\"id\": \"query_0\", \"image\": \"r.png\", \"text\": \"make it red\", \"modality\": \"image\", \"metadata\": {\"subcategory\": \"color\"}}\n";
    const C: &str = "{\"id\": \"a.png\", \"image\": \"a.png\", \"modality\": \"image\"}\n{\"id\": \"b.png\", \"image\": \"b.png\", \"modality\": \"image\"}\n";

    #[test]
    fn reads_a_valid_benchmark() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            Q,
            C,
            "{\"qid\": \"query_0\", \"pos\": [\"a.png\"], \"neg\": [\"b.png\"]}\n",
        );
        let bench = Benchmark::read(dir.path(), None, false).unwrap();
        assert_eq!(bench.queries[0].subcategory(), "color");
        assert_eq!(bench.corpus.len(), 2);
        assert_eq!(bench.instances[0].neg, ["b.png"]);
    }

    #[test]
    fn every_problem_names_its_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let queries = format!("{Q}{{\"id\": \"query_1\", \"image\": \"r.png\"\n{Q}");
        let corpus = format!("{C}{{\"id\": \"a.png\", \"image\": \"a.png\"}}\n");
        write(
            dir.path(),
            &queries,
            &corpus,
            "{\"qid\": \"query_0\", \"pos\": [\"zzz.png\"], \"neg\": []}\n{\"qid\": \"query_9\", \"pos\": [\"a.png\"]}\n",
        );
        let error = Benchmark::read(dir.path(), None, true).unwrap_err();
        let text = error.to_string();
        for expected in [
            "queries.jsonl:2: malformed record: ",
            "queries.jsonl:3: duplicate query id `query_0` (first on line 1)",
            "corpus.jsonl:3: duplicate corpus id `a.png` (first on line 1)",
            "instances.jsonl:1: positive `zzz.png` of query `query_0` is not in the corpus",
            "instances.jsonl:2: instance for unknown query `query_9`",
            "image `r.png` not found in",
        ] {
            assert!(text.contains(expected), "`{expected}` in\n{text}");
        }
    }

    #[test]
    fn missing_files_and_instances() {
        let dir = tempfile::tempdir().unwrap();
        let error = Benchmark::read(dir.path(), None, false).unwrap_err();
        assert!(
            error.to_string().contains("queries.jsonl: file not found"),
            "{error}"
        );
        write(dir.path(), Q, C, "");
        let error = Benchmark::read(dir.path(), None, false).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("queries.jsonl:1: query `query_0` has no instance in `instances.jsonl`"),
            "{error}"
        );
    }
}
