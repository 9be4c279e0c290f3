//! Client benchmark against the in-process simulator (run through `scripts/bench-clients`).
//!
//! 1. Overhead: small chat requests at zero latency with 256 in flight; requests per second,
//!    simulator included (goal: at least 8,000/s on 2 cores).
//! 2. Saturation: a replica of C slots and service time L; achieved throughput against C/L
//!    (goal: at least 95%), and the adaptive limit over time (it should settle, not oscillate).
#![allow(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    clippy::print_stdout,
    reason = "a benchmark"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use edir_model::{ChatRequest, Endpoint, EndpointConfig, Message, Role};
use edir_sim::{Capacity, SimConfig, SimServer};

const MODEL: &str = "Qwen/Qwen3-32B";

fn hello() -> ChatRequest {
    ChatRequest {
        messages: vec![Message::text(Role::User, "Say hello.")],
        max_tokens: Some(16),
        ..ChatRequest::default()
    }
}

async fn drive(
    endpoint: &Arc<Endpoint>,
    tasks: usize,
    duration: Duration,
    counter: &Arc<AtomicU64>,
) {
    let stop = Instant::now() + duration;
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let endpoint = Arc::clone(endpoint);
        let counter = Arc::clone(counter);
        handles.push(tokio::spawn(async move {
            let request = hello();
            while Instant::now() < stop {
                if endpoint.chat(&request).await.is_ok() {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let runs: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);

    // 1. Overhead.
    let sim = SimServer::start(SimConfig::default_models(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut rates = Vec::new();
    for run in 1..=runs {
        let mut config = EndpointConfig::new("llm", MODEL, vec![sim.base_url()]);
        config.max_in_flight = 256;
        config.min_in_flight = 256;
        let endpoint = Endpoint::new(config).unwrap();
        let counter = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        drive(&endpoint, 256, Duration::from_secs(seconds), &counter).await;
        let rate = counter.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
        println!(
            "overhead run {run}: {rate:.0} requests/s (256 in flight, zero latency, simulator in process)"
        );
        rates.push(rate);
    }
    println!(
        "overhead median: {:.0} requests/s over {runs} runs (goal >= 8000)",
        median(rates)
    );
    drop(sim);

    // 2. Saturation.
    let (slots, service_ms) = (16usize, 50.0);
    let mut sim_config = SimConfig::default_models();
    for model in &mut sim_config.models {
        model.capacity = Capacity {
            slots,
            queue: 4096,
            base_ms: service_ms,
            per_token_ms: 0.0,
            per_megapixel_ms: 0.0,
        };
    }
    let sim = SimServer::start(sim_config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let capacity = slots as f64 / (service_ms / 1000.0);
    let mut shares = Vec::new();
    for run in 1..=runs {
        let mut config = EndpointConfig::new("llm", MODEL, vec![sim.base_url()]);
        config.max_in_flight = 128;
        config.min_in_flight = 2;
        let endpoint = Endpoint::new(config).unwrap();
        let monitor = endpoint.spawn_monitor(Duration::from_millis(200));
        let counter = Arc::new(AtomicU64::new(0));
        let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sampler = {
            let endpoint = Arc::clone(&endpoint);
            let samples = Arc::clone(&samples);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    samples.lock().unwrap().push(endpoint.concurrency_limit());
                }
            })
        };
        let total = Duration::from_secs(seconds * 2);
        let warm = Duration::from_secs(seconds);
        let driver = {
            let endpoint = Arc::clone(&endpoint);
            let counter = Arc::clone(&counter);
            tokio::spawn(async move { drive(&endpoint, 256, total, &counter).await })
        };
        tokio::time::sleep(warm).await;
        let at_warm = counter.load(Ordering::Relaxed);
        let measured_from = Instant::now();
        driver.await.unwrap();
        let rate = (counter.load(Ordering::Relaxed) - at_warm) as f64
            / measured_from.elapsed().as_secs_f64();
        sampler.abort();
        monitor.abort();
        let samples = samples.lock().unwrap().clone();
        let settled = &samples[samples.len() / 2..];
        let (lo, hi) = (
            settled.iter().min().copied().unwrap_or(0),
            settled.iter().max().copied().unwrap_or(0),
        );
        let share = rate / capacity;
        println!(
            "saturation run {run}: {rate:.0} requests/s of C/L = {capacity:.0} ({:.1}%); limit over the second half {lo}..{hi} (C = {slots}), trace {:?}",
            share * 100.0,
            samples
        );
        shares.push(share);
    }
    println!(
        "saturation median: {:.1}% of C/L over {runs} runs (goal >= 95%)",
        median(shares) * 100.0
    );
}
