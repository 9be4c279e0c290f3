//! `run`, `status` and `export` as users run them, on the simulator.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn edir_synth(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edir-synth"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `run pipelines/full.yaml --sim` for two subcategories at quota 2, small scenes, plus `extra`.
fn run_args<'a>(workdir: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "run",
        "pipelines/full.yaml",
        "--sim",
        "--quota",
        "2",
        "--only",
        "global.style",
        "--only",
        "color",
        "--sim-sizes",
        "64",
        "--workdir",
        workdir,
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn run_on_the_simulator_exports_scores_and_reports_status() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let work_arg = work.to_str().unwrap();
    let out = edir_synth(&run_args(work_arg, &[]));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("exported 4 queries"), "{stdout}");
    assert!(stdout.contains("scored 3 models"), "{stdout}");
    let queries = fs_err::read_to_string(work.join("benchmark/queries.jsonl")).unwrap();
    assert_eq!(queries.lines().count(), 4);
    assert!(work.join("report/results.json").is_file());
    let logs: Vec<_> = fs_err::read_dir(work.join("logs")).unwrap().collect();
    assert_eq!(logs.len(), 1, "one JSON log per run");

    let status = edir_synth(&["status", "--workdir", work_arg, "--json"]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status.stderr));
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(report["state"], "finished");
    assert_eq!(report["accepted"], 4);
    assert_eq!(report["subcategories"]["global.style"]["accepted"], 2);
    assert!(report["endpoints"]["editor"]["calls"].as_i64().unwrap() >= 4);

    let table = edir_synth(&["status", "--workdir", work_arg]);
    assert!(text(&table.stdout).contains("attribute.color"));

    // `export` on demand writes the same bytes as the run's own export.
    let again = dir.path().join("again");
    let export = edir_synth(&[
        "export",
        "pipelines/full.yaml",
        "--workdir",
        work_arg,
        "--out",
        again.to_str().unwrap(),
    ]);
    assert_eq!(export.status.code(), Some(0), "{}", text(&export.stderr));
    for file in [
        "queries.jsonl",
        "corpus.jsonl",
        "instances.jsonl",
        "stats.json",
        "preview.html",
    ] {
        assert_eq!(
            fs_err::read(work.join("benchmark").join(file)).unwrap(),
            fs_err::read(again.join(file)).unwrap(),
            "{file} is byte-identical"
        );
    }

    // Score the export through a simulator's embedding endpoint (cached in a store).
    let mut sim = Command::new(env!("CARGO_BIN_EXE_edir-synth"))
        .args(["sim", "--port", "0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(sim.stdout.as_mut().unwrap()),
        &mut first,
    )
    .unwrap();
    let url = first.split_whitespace().nth(3).unwrap().to_string();
    let cache = format!("sqlite://{}", dir.path().join("cache.sqlite").display());
    let bench = work.join("benchmark");
    let scored: Vec<String> = (0..2)
        .map(|_| {
            let out = edir_synth(&[
                "score",
                bench.to_str().unwrap(),
                "--model",
                &format!("sim/embed-compose={url}"),
                "--store",
                &cache,
            ]);
            assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
            text(&out.stdout)
        })
        .collect();
    // The same benchmark with its images in a split tar archive (as the official release
    // ships them), read in place: the same scores, embedded afresh (a new cache).
    let packed = dir.path().join("packed");
    fs_err::create_dir_all(&packed).unwrap();
    for file in ["queries.jsonl", "corpus.jsonl", "instances.jsonl"] {
        fs_err::copy(bench.join(file), packed.join(file)).unwrap();
    }
    let split = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -cf - -C '{}' images | split -b 7000 - '{}/imgs_mc.tar.part'",
            bench.display(),
            packed.display()
        ))
        .status()
        .unwrap();
    assert!(split.success());
    assert!(packed.join("imgs_mc.tar.partab").is_file(), "several parts");
    let from_tar = edir_synth(&[
        "score",
        packed.to_str().unwrap(),
        "--model",
        &format!("sim/embed-compose={url}"),
        "--store",
        &format!("sqlite://{}", dir.path().join("cache2.sqlite").display()),
    ]);
    assert_eq!(
        from_tar.status.code(),
        Some(0),
        "{}",
        text(&from_tar.stderr)
    );
    assert_eq!(text(&from_tar.stdout), scored[0], "scores from the archive");
    // Per-model instructions: a new query instruction embeds the queries again (cached apart).
    let instructions = |cache: &str| {
        let cache = cache.to_string();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                use sqlx::Connection as _;
                let mut conn = sqlx::SqliteConnection::connect(&cache).await.unwrap();
                let n: i64 =
                    sqlx::query_scalar("SELECT COUNT(DISTINCT instruction) FROM embeddings")
                        .fetch_one(&mut conn)
                        .await
                        .unwrap();
                n
            })
    };
    assert_eq!(
        instructions(&cache),
        2,
        "the official query and corpus instructions"
    );
    let custom = edir_synth(&[
        "score",
        bench.to_str().unwrap(),
        "--model",
        &format!("sim/embed-compose={url}"),
        "--query-instruction",
        "sim/embed-compose=Find this image, changed: ",
        "--query-instruction",
        "other-model=Never used: ",
        "--store",
        &cache,
    ]);
    assert_eq!(custom.status.code(), Some(0), "{}", text(&custom.stderr));
    assert_eq!(
        instructions(&cache),
        3,
        "one more query instruction, the same corpus one"
    );
    let _ = sim.kill();
    let _ = sim.wait();
    assert!(scored[0].contains("sim/embed-compose R@1"), "{}", scored[0]);
    assert_eq!(scored[0], scored[1], "cached vectors score the same");
    let unreachable = edir_synth(&[
        "score",
        bench.to_str().unwrap(),
        "--model",
        "m=http://127.0.0.1:9/v1",
        "--store",
        &cache,
    ]);
    assert_eq!(unreachable.status.code(), Some(2));
    assert!(text(&unreachable.stderr).contains("cannot score `m`"));

    // A second run of the finished work directory has nothing to do.
    let second = edir_synth(&run_args(work_arg, &["--no-score"]));
    assert_eq!(second.status.code(), Some(0), "{}", text(&second.stderr));
    assert!(
        text(&second.stdout).contains(": 0 model calls"),
        "{}",
        text(&second.stdout)
    );
}

#[test]
fn an_unknown_subcategory_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = edir_synth(&[
        "run",
        "pipelines/full.yaml",
        "--sim",
        "--only",
        "colour",
        "--workdir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("`--only colour`"), "{stderr}");
}

#[test]
fn status_without_a_run_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = edir_synth(&["status", "--workdir", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("nothing has run"),
        "{}",
        text(&out.stderr)
    );
}
