//! `score` as users run it: a valid benchmark with vector files, and bad benchmarks (exit 2).

use std::path::Path;
use std::process::{Command, Output};

fn edir_synth(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edir-synth"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn write_npy(path: &Path, rows: &[[f32; 2]]) {
    let header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, 2), }}",
        rows.len()
    );
    let mut header = header;
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&u16::try_from(header.len()).unwrap().to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for row in rows {
        for x in row {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
    }
    std::fs::write(path, bytes).unwrap();
}

fn bench(dir: &Path) {
    std::fs::create_dir_all(dir.join("bench")).unwrap();
    std::fs::write(
        dir.join("bench/queries.jsonl"),
        "{\"id\":\"query_0\",\"image\":\"r.png\",\"text\":\"red\",\"modality\":\"image\",\"metadata\":{\"subcategory\":\"color\"}}\n{\"id\":\"query_1\",\"image\":\"r.png\",\"text\":\"night\",\"modality\":\"image\",\"metadata\":{\"subcategory\":\"time\"}}\n",
    )
    .unwrap();
    std::fs::write(dir.join("bench/corpus.jsonl"), "{\"id\":\"a.png\",\"image\":\"a.png\"}\n{\"id\":\"b.png\",\"image\":\"b.png\"}\n{\"id\":\"c.png\",\"image\":\"c.png\"}\n").unwrap();
    std::fs::write(dir.join("bench/instances.jsonl"), "{\"qid\":\"query_0\",\"pos\":[\"a.png\"],\"neg\":[\"b.png\"]}\n{\"qid\":\"query_1\",\"pos\":[\"c.png\"],\"neg\":[\"a.png\"]}\n").unwrap();
    std::fs::create_dir_all(dir.join("emb")).unwrap();
    write_npy(&dir.join("emb/queries.npy"), &[[1.0, 0.0], [1.0, 0.1]]);
    write_npy(
        &dir.join("emb/corpus.npy"),
        &[[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]],
    );
}

#[test]
fn scores_a_benchmark_from_vector_files() {
    let dir = tempfile::tempdir().unwrap();
    bench(dir.path());
    let out = edir_synth(
        &[
            "score",
            "bench",
            "--embeddings",
            "toy=emb",
            "--out",
            "report",
        ],
        dir.path(),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: serde_json::Value = serde_json::from_str(
        &fs_err::read_to_string(dir.path().join("report/results.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(results["model"], "toy");
    assert_eq!(
        results["overall"]["recall@1"], 0.5,
        "query_0 finds a.png first; query_1 ranks a.png above c.png"
    );
    assert_eq!(results["by_subcategory"]["time"]["recall@3"], 1.0);
    assert_eq!(results["by_category"]["attribute"]["queries"], 1);
    let predictions: serde_json::Value = serde_json::from_str(
        &fs_err::read_to_string(dir.path().join("report/predictions.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(predictions["query_0"].as_object().unwrap().len(), 3);
    assert!(
        fs_err::read_to_string(dir.path().join("report/results.md"))
            .unwrap()
            .contains("| color | 1 |")
    );
}

#[test]
fn bad_benchmarks_and_vectors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    bench(dir.path());
    std::fs::write(
        dir.path().join("bench/instances.jsonl"),
        "{\"qid\":\"query_0\",\"pos\":[\"x.png\"]}\n",
    )
    .unwrap();
    let out = edir_synth(&["score", "bench", "--embeddings", "emb"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "instances.jsonl:1: positive `x.png` of query `query_0` is not in the corpus"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("queries.jsonl:2: query `query_1` has no instance"),
        "{stderr}"
    );
    bench(dir.path());
    write_npy(&dir.path().join("emb/corpus.npy"), &[[1.0, 0.0]]);
    let out = edir_synth(&["score", "bench", "--embeddings", "emb"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("corpus.npy has 1 rows but the benchmark has 3 corpus items")
    );
    write_npy(
        &dir.path().join("emb/corpus.npy"),
        &[[1.0, 0.0], [f32::NAN, 1.0], [0.0, 1.0]],
    );
    let out = edir_synth(&["score", "bench", "--embeddings", "emb"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("row 1 holds a NaN"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
