//! Times the exact top-k search on `queries.npy` x `corpus.npy` (run by `scripts/bench-scorer`).
//! Usage: `bench_topk DIR K RUNS` — prints one `seconds` line per run (the search, then the same
//! tiles without the selection), GFLOP/s, peak RSS, and
//! writes the first 200 queries' top-k indices to `DIR/ours_topk.json` for the exactness check.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    reason = "a benchmark"
)]

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use edir_retrieval::{Matrix, search};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::Path::new(&args[1]);
    let k: usize = args[2].parse().unwrap();
    let runs: usize = args[3].parse().unwrap();
    let queries = Matrix::read_npy(&dir.join("queries.npy")).unwrap();
    let corpus = Matrix::read_npy(&dir.join("corpus.npy")).unwrap();
    let ids: Vec<String> = (0..corpus.rows).map(|i| format!("{i:09}")).collect();
    let ranks = edir_retrieval::tie_ranks(&ids);
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let mut last = Vec::new();
    for run in 1..=runs {
        let started = Instant::now();
        last = search(
            &queries,
            &corpus,
            &ranks,
            k,
            None,
            threads,
            &AtomicBool::new(false),
        )
        .unwrap();
        let seconds = started.elapsed().as_secs_f64();
        let flops = 2.0 * queries.rows as f64 * corpus.rows as f64 * queries.dim as f64;
        println!(
            "ours run {run}: {seconds:.3} s, {:.1} GFLOP/s",
            flops / seconds / 1e9
        );
    }
    for run in 1..=runs {
        let started = Instant::now();
        let checksum = edir_retrieval::tiles_only(&queries, &corpus, threads);
        let seconds = started.elapsed().as_secs_f64();
        let flops = 2.0 * queries.rows as f64 * corpus.rows as f64 * queries.dim as f64;
        println!(
            "tiles-only run {run}: {seconds:.3} s, {:.1} GFLOP/s (checksum {checksum:.3})",
            flops / seconds / 1e9
        );
    }
    let top: Vec<Vec<u32>> = last
        .iter()
        .take(200)
        .map(|r| r.iter().map(|x| x.index).collect())
        .collect();
    std::fs::write(
        dir.join("ours_topk.json"),
        serde_json::to_string(&top).unwrap(),
    )
    .unwrap();
    let status = fs_err::read_to_string("/proc/self/status").unwrap_or_default();
    let peak = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap_or("VmHWM: ?")
        .to_string();
    println!("ours peak memory: {peak}");
}
