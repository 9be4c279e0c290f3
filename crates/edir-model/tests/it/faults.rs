//! Each fault class of the simulator: classified, retried exactly as the policy allows,
//! `Retry-After` honoured, failover to a healthy replica, circuit breaking.

use std::time::{Duration, Instant};

use edir_model::{ChatRequest, Endpoint, ErrorKind, Message, Role};
use edir_sim::{Faults, SimConfig};

use crate::clients::{config, sim};
use crate::scripted::{Reply, serve};

fn faulty(faults: Faults) -> SimConfig {
    let mut config = SimConfig::default_models();
    for model in &mut config.models {
        model.faults = faults.clone();
    }
    config
}

fn hello() -> ChatRequest {
    ChatRequest {
        messages: vec![Message::text(Role::User, "hello")],
        ..ChatRequest::default()
    }
}

#[tokio::test]
async fn every_transport_fault_is_classified_and_retried_to_the_budget() {
    for (faults, class) in [
        (
            Faults {
                rate_limit: 1.0,
                retry_after_s: 0,
                ..Faults::default()
            },
            "http_429",
        ),
        (
            Faults {
                server_error: 1.0,
                ..Faults::default()
            },
            "http_500",
        ),
        (
            Faults {
                unavailable: 1.0,
                retry_after_s: 0,
                ..Faults::default()
            },
            "http_503",
        ),
        (
            Faults {
                hang: 1.0,
                hang_s: 30,
                ..Faults::default()
            },
            "timeout",
        ),
        (
            Faults {
                cut: 1.0,
                ..Faults::default()
            },
            "body_cut",
        ),
    ] {
        let sim = sim(faulty(faults)).await;
        let mut cfg = config("llm", "Qwen/Qwen3-32B", vec![sim.base_url()]);
        cfg.attempts = 3;
        cfg.timeout = Duration::from_millis(300);
        let endpoint = Endpoint::new(cfg).unwrap();
        let error = endpoint.chat(&hello()).await.unwrap_err();
        assert_eq!(error.class(), class, "{error}");
        assert!(error.is_retryable());
        let stats = endpoint.snapshot();
        assert_eq!(stats.requests, 3, "{class}: exactly the attempt budget");
        assert_eq!(stats.retries, 2);
        assert_eq!(stats.failures[class], 3);
    }
}

#[tokio::test]
async fn final_errors_are_not_retried() {
    let server = serve(vec![Reply::Status(400, None)]).await;
    let endpoint = Endpoint::new(config("llm", "m", vec![server.base_url.clone()])).unwrap();
    let error = endpoint.chat(&hello()).await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Status(400));
    assert_eq!(
        error.message, "scripted 400",
        "the server's message is kept"
    );
    assert_eq!(server.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    for code in [401, 403, 404, 413, 422] {
        let server = serve(vec![Reply::Status(code, None)]).await;
        let endpoint = Endpoint::new(config("llm", "m", vec![server.base_url.clone()])).unwrap();
        assert!(!endpoint.chat(&hello()).await.unwrap_err().is_retryable());
        assert_eq!(
            server.hits.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "{code}"
        );
    }
}

#[tokio::test]
async fn retry_after_is_honoured_and_the_request_then_succeeds() {
    let server = serve(vec![
        Reply::Status(429, Some("1")),
        Reply::Status(503, Some("1")),
        Reply::Content("ok"),
    ])
    .await;
    let endpoint = Endpoint::new(config("llm", "m", vec![server.base_url.clone()])).unwrap();
    let started = Instant::now();
    let reply = endpoint.chat(&hello()).await.unwrap();
    assert_eq!(reply.content, "ok");
    assert_eq!(reply.attempts, 3);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "waited {:?}, the server asked 1 s twice",
        started.elapsed()
    );
    assert_eq!(
        server.hits.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "no request lost or sent twice"
    );
}

#[tokio::test]
async fn a_retry_that_would_pass_the_deadline_fails_now() {
    let server = serve(vec![Reply::Status(503, Some("60"))]).await;
    let mut cfg = config("llm", "m", vec![server.base_url.clone()]);
    cfg.deadline = Duration::from_secs(5);
    let endpoint = Endpoint::new(cfg).unwrap();
    let started = Instant::now();
    let error = endpoint.chat(&hello()).await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Deadline);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_dead_replica_fails_over_and_its_breaker_opens() {
    let live = sim(SimConfig::default_models()).await;
    let cfg = config(
        "llm",
        "Qwen/Qwen3-32B",
        vec!["http://127.0.0.1:9/v1".into(), live.base_url()],
    );
    let endpoint = Endpoint::new(cfg).unwrap();
    for _ in 0..20 {
        endpoint.chat(&hello()).await.unwrap();
    }
    let dead = &endpoint.replicas()[0];
    assert!(dead.is_open(), "the breaker of the dead replica opened");
    let dead_attempts = dead.stats.snapshot().requests;
    assert!(
        dead_attempts <= u64::from(edir_model::FAILURE_THRESHOLD),
        "{dead_attempts} attempts hit the dead replica"
    );
    assert_eq!(endpoint.replicas()[1].stats.snapshot().successes, 20);
}

#[tokio::test]
async fn all_replicas_down_means_no_replica() {
    let mut cfg = config("llm", "m", vec!["http://127.0.0.1:9/v1".into()]);
    cfg.attempts = 10;
    let endpoint = Endpoint::new(cfg).unwrap();
    let error = endpoint.chat(&hello()).await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::NoReplica, "{error}");
    assert_eq!(
        endpoint.replicas()[0].stats.snapshot().requests,
        u64::from(edir_model::FAILURE_THRESHOLD)
    );
}

#[tokio::test]
async fn the_monitor_opens_the_breaker_of_an_unhealthy_replica() {
    let live = sim(SimConfig::default_models()).await;
    let endpoint = Endpoint::new(config(
        "llm",
        "Qwen/Qwen3-32B",
        vec!["http://127.0.0.1:9/v1".into(), live.base_url()],
    ))
    .unwrap();
    let monitor = endpoint.spawn_monitor(Duration::from_millis(20));
    let started = Instant::now();
    while !endpoint.replicas()[0].is_open() && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    monitor.abort();
    assert!(
        endpoint.replicas()[0].is_open(),
        "health checks alone opened the dead replica's breaker"
    );
    assert!(!endpoint.replicas()[1].is_open());
    endpoint.chat(&hello()).await.unwrap();
    assert_eq!(
        endpoint.replicas()[0].stats.snapshot().requests,
        0,
        "no request went to the dead replica"
    );
}
