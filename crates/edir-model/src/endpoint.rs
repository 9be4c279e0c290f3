//! An endpoint: one model served by one or more replicas, with least-outstanding-requests
//! routing, a circuit breaker per replica, retries with capped exponential back-off and full
//! jitter that honour `Retry-After`, an adaptive concurrency limit, optional request and token
//! rate limits, and accounting.
//!
//! Every call goes through [`Endpoint::send`]: the request body is built once; each attempt
//! picks a replica (avoiding the one that just failed, so a request in flight on a dying
//! replica is retried on another), holds a permit of the adaptive limit, and is bounded by the
//! request timeout; the whole call is bounded by the task deadline and the attempt budget.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use backon::BackoffBuilder as _;
use tokio::time::{Duration, Instant};

use crate::breaker::Breaker;
use crate::error::{ErrorKind, ModelError, parse_retry_after, server_message};
use crate::key::{ApiKey, safe_url};
use crate::limit::AdaptiveLimit;
use crate::rate::RateLimit;
use crate::stats::{Stats, StatsSnapshot};

/// How an endpoint is reached and how hard it may be pushed.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// The logical name (`vlm`).
    pub name: String,
    /// The model id sent with every request and expected in `/v1/models`.
    pub model: String,
    /// Replica base URLs (`http://host:port/v1`).
    pub urls: Vec<String>,
    /// The API key, if the servers want one.
    pub api_key: Option<ApiKey>,
    /// Upper bound of the adaptive concurrency limit (all replicas together).
    pub max_in_flight: usize,
    /// Floor of the adaptive limit.
    pub min_in_flight: usize,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// First back-off; doubles per retry, capped at `max_backoff`, full jitter.
    pub initial_backoff: Duration,
    /// Cap of one back-off.
    pub max_backoff: Duration,
    /// Deadline of a whole call, all attempts together.
    pub deadline: Duration,
    /// Optional request rate limit (hosted APIs).
    pub requests_per_minute: Option<u32>,
    /// Optional token rate limit (hosted APIs).
    pub tokens_per_minute: Option<u32>,
}

impl EndpointConfig {
    /// Defaults for a local vLLM endpoint.
    #[must_use]
    pub fn new(name: &str, model: &str, urls: Vec<String>) -> Self {
        Self {
            name: name.to_string(),
            model: model.to_string(),
            urls,
            api_key: None,
            max_in_flight: 64,
            min_in_flight: 1,
            timeout: Duration::from_secs(300),
            attempts: 6,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            deadline: Duration::from_secs(1800),
            requests_per_minute: None,
            tokens_per_minute: None,
        }
    }
}

/// One replica.
#[derive(Debug)]
pub struct Replica {
    /// Base URL (no credentials).
    pub url: String,
    outstanding: AtomicUsize,
    breaker: Mutex<Breaker>,
    /// Its counters.
    pub stats: Stats,
}

impl Replica {
    fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Requests in flight on it.
    #[must_use]
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Whether its breaker is open.
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.breaker().is_open()
    }

    /// The server root (the base URL without a trailing `/v1`), where `/health` and
    /// `/metrics` live.
    #[must_use]
    pub fn root(&self) -> &str {
        self.url.strip_suffix("/v1").unwrap_or(&self.url)
    }
}

/// The raw successful reply of one call.
#[derive(Debug)]
pub struct RawReply {
    /// The body.
    pub body: bytes::Bytes,
    /// The replica that answered.
    pub replica: String,
    /// Time of the successful attempt.
    pub latency: Duration,
    /// Attempts made (1 = first try).
    pub attempts: u32,
}

/// An endpoint pool.
#[derive(Debug)]
pub struct Endpoint {
    /// Its configuration.
    pub config: EndpointConfig,
    pub(crate) http: reqwest::Client,
    replicas: Vec<Replica>,
    limit: Arc<AdaptiveLimit>,
    rate: Option<RateLimit>,
    /// Endpoint-wide counters.
    pub stats: Stats,
    jitter: Mutex<u64>,
}

impl Endpoint {
    /// Builds the pool without contacting anything.
    ///
    /// # Errors
    /// [`ErrorKind::Request`] when no URL is given or the HTTP client cannot be built.
    pub fn new(config: EndpointConfig) -> Result<Arc<Self>, ModelError> {
        if config.urls.is_empty() {
            return Err(ModelError::new(
                ErrorKind::Request,
                &config.name,
                "",
                "no replica URLs",
            ));
        }
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(config.max_in_flight.max(16))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| ModelError::new(ErrorKind::Request, &config.name, "", e.to_string()))?;
        let replicas = config
            .urls
            .iter()
            .map(|u| Replica {
                url: safe_url(u.trim_end_matches('/')),
                outstanding: AtomicUsize::new(0),
                breaker: Mutex::new(Breaker::default()),
                stats: Stats::default(),
            })
            .collect();
        let initial = config.max_in_flight.min(config.min_in_flight.max(8));
        let limit = AdaptiveLimit::new(config.min_in_flight, config.max_in_flight, initial);
        let rate = RateLimit::new(config.requests_per_minute, config.tokens_per_minute);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| u64::from(d.subsec_nanos()) ^ d.as_secs())
            | 1;
        Ok(Arc::new(Self {
            config,
            http,
            replicas,
            limit,
            rate,
            stats: Stats::default(),
            jitter: Mutex::new(seed),
        }))
    }

    /// Builds the pool and checks every replica: `/health` answers and `/v1/models` lists the
    /// model. Fails fast with the URL and what was expected.
    ///
    /// # Errors
    /// The first replica that is unreachable, unhealthy or serves another model.
    pub async fn connect(config: EndpointConfig) -> Result<Arc<Self>, ModelError> {
        let endpoint = Self::new(config)?;
        for replica in &endpoint.replicas {
            endpoint.check_replica(replica).await?;
        }
        Ok(endpoint)
    }

    async fn check_replica(&self, replica: &Replica) -> Result<(), ModelError> {
        let name = &self.config.name;
        let fail = |kind, message: String| ModelError::new(kind, name, &replica.url, message);
        let timeout = Duration::from_secs(10).min(self.config.timeout);
        let health = tokio::time::timeout(
            timeout,
            self.http.get(format!("{}/health", replica.root())).send(),
        )
        .await;
        match health {
            Err(_) => return Err(fail(ErrorKind::Timeout, "`/health` did not answer".into())),
            Ok(Err(e)) => return Err(fail(ErrorKind::Connect, transport_message(&e))),
            Ok(Ok(r)) if !r.status().is_success() => {
                return Err(fail(
                    ErrorKind::Status(r.status().as_u16()),
                    "`/health` reports the server unhealthy".into(),
                ));
            }
            Ok(Ok(_)) => {}
        }
        let mut request = self.http.get(format!("{}/models", replica.url));
        if let Some(key) = &self.config.api_key {
            request = request.header(reqwest::header::AUTHORIZATION, key.bearer());
        }
        let models = tokio::time::timeout(timeout, async {
            request
                .send()
                .await?
                .error_for_status()?
                .json::<serde_json::Value>()
                .await
        })
        .await
        .map_err(|_| fail(ErrorKind::Timeout, "`/v1/models` did not answer".into()))?
        .map_err(|e| {
            fail(
                ErrorKind::Decode,
                format!("`/v1/models`: {}", transport_message(&e)),
            )
        })?;
        let ids: Vec<&str> = models["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["id"].as_str())
            .collect();
        if !ids.contains(&self.config.model.as_str()) {
            return Err(fail(
                ErrorKind::Status(404),
                format!(
                    "serves {} but not `{}`",
                    ids.iter()
                        .map(|i| format!("`{i}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    self.config.model
                ),
            ));
        }
        Ok(())
    }

    /// Every `every`: checks each replica's `/health` (a failure counts against its breaker)
    /// and feeds the replicas' `/metrics` queue length to the adaptive limit. Stops when the
    /// endpoint is dropped.
    pub fn spawn_monitor(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                ticker.tick().await;
                let Some(endpoint) = weak.upgrade() else {
                    break;
                };
                let (mut waiting, mut running, mut seen) = (0.0, 0.0, false);
                for replica in &endpoint.replicas {
                    // A replica whose `/health` fails counts a fault even without traffic, so
                    // its breaker opens before requests are routed to it.
                    let healthy = tokio::time::timeout(
                        Duration::from_secs(2),
                        endpoint
                            .http
                            .get(format!("{}/health", replica.root()))
                            .send(),
                    )
                    .await
                    .is_ok_and(|r| r.is_ok_and(|r| r.status().is_success()));
                    if !healthy {
                        replica.breaker().on_failure();
                        continue;
                    }
                    if let Some((w, r)) = endpoint.queue_of(replica).await {
                        waiting += w;
                        running += r;
                        seen = true;
                    }
                }
                if seen {
                    endpoint.limit.on_queue(waiting, running);
                }
            }
        })
    }

    /// `vllm:num_requests_waiting` and `vllm:num_requests_running` of one replica (for this
    /// endpoint's model when the lines carry `model_name`).
    async fn queue_of(&self, replica: &Replica) -> Option<(f64, f64)> {
        let text = tokio::time::timeout(Duration::from_secs(2), async {
            self.http
                .get(format!("{}/metrics", replica.root()))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()
        })
        .await
        .ok()??;
        Some(parse_queue(&text, &self.config.model))
    }

    /// The replicas.
    #[must_use]
    pub fn replicas(&self) -> &[Replica] {
        &self.replicas
    }

    /// The current adaptive concurrency limit.
    #[must_use]
    pub fn concurrency_limit(&self) -> usize {
        self.limit.limit()
    }

    /// Endpoint-wide counters.
    #[must_use]
    pub fn snapshot(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// The replica with the fewest outstanding requests whose breaker allows a request,
    /// preferring one other than `avoid`.
    fn pick(&self, avoid: Option<usize>) -> Option<usize> {
        let choose = |skip: Option<usize>| {
            self.replicas
                .iter()
                .enumerate()
                .filter(|(i, r)| Some(*i) != skip && r.breaker().is_available())
                .min_by_key(|(_, r)| r.outstanding())
                .map(|(i, _)| i)
        };
        let index = choose(avoid).or_else(|| choose(None))?;
        self.replicas[index].breaker().allow().then_some(index)
    }

    fn full_jitter(&self, delay: Duration) -> Duration {
        let mut state = self
            .jitter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        #[expect(clippy::cast_precision_loss, reason = "a fraction")]
        let fraction = (*state >> 11) as f64 / (1u64 << 53) as f64;
        delay.mul_f64(fraction)
    }

    /// Sends one logical request with retries and failover. `build` makes the request for a
    /// replica base URL (called once per attempt; bodies it clones are cheap `Bytes`).
    /// `cost_tokens` is charged against a tokens-per-minute limit.
    ///
    /// # Errors
    /// The last attempt's error when it is final, the attempts are spent, or the deadline
    /// would pass while waiting.
    pub async fn send(
        &self,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
        cost_tokens: u64,
    ) -> Result<RawReply, ModelError> {
        let config = &self.config;
        let started = Instant::now();
        let deadline = started + config.deadline;
        let mut schedule = backon::ExponentialBuilder::default()
            .with_min_delay(config.initial_backoff)
            .with_max_delay(config.max_backoff)
            .with_factor(2.0)
            .without_max_times()
            .build();
        let mut avoid = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            if let Some(rate) = &self.rate {
                rate.acquire(cost_tokens).await;
            }
            let error: ModelError = match self.pick(avoid) {
                None => ModelError::new(
                    ErrorKind::NoReplica,
                    &config.name,
                    "",
                    "every replica's circuit breaker is open",
                ),
                Some(index) => {
                    let replica = &self.replicas[index];
                    let permit = tokio::time::timeout_at(deadline, self.limit.acquire()).await;
                    let Ok(permit) = permit else {
                        return Err(ModelError::new(
                            ErrorKind::Deadline,
                            &config.name,
                            &replica.url,
                            "no room under the concurrency limit before the deadline",
                        ));
                    };
                    replica.outstanding.fetch_add(1, Ordering::Relaxed);
                    let attempt_started = Instant::now();
                    let outcome = self.attempt(replica, &build).await;
                    let latency = attempt_started.elapsed();
                    replica.outstanding.fetch_sub(1, Ordering::Relaxed);
                    drop(permit);
                    let class = outcome.as_ref().err().map(ModelError::class);
                    replica.stats.record(latency, class.as_deref());
                    self.stats.record(latency, class.as_deref());
                    match outcome {
                        Ok(body) => {
                            replica.breaker().on_success();
                            self.limit.on_success();
                            return Ok(RawReply {
                                body,
                                replica: replica.url.clone(),
                                latency,
                                attempts: attempt,
                            });
                        }
                        Err(error) => {
                            if error.is_replica_fault() {
                                replica.breaker().on_failure();
                            } else {
                                // The replica answered sensibly: its probe (if any) succeeded.
                                replica.breaker().on_success();
                            }
                            if error.is_overload() {
                                self.limit.on_overload();
                            }
                            avoid = Some(index);
                            error
                        }
                    }
                }
            };
            if !error.is_retryable() || attempt >= config.attempts {
                return Err(error);
            }
            let backoff = self.full_jitter(schedule.next().unwrap_or(config.max_backoff));
            let wait = error
                .retry_after
                .map_or(backoff, |after| after.max(backoff));
            if Instant::now() + wait > deadline {
                let mut late = error.clone();
                late.kind = ErrorKind::Deadline;
                late.message = format!(
                    "{} (a retry in {:.1} s would pass the deadline)",
                    error.message,
                    wait.as_secs_f64()
                );
                return Err(late);
            }
            tracing::debug!(endpoint = %config.name, attempt, class = %error.class(), wait_ms = wait.as_millis(), "retrying");
            self.stats.retry();
            tokio::time::sleep(wait).await;
        }
    }

    async fn attempt(
        &self,
        replica: &Replica,
        build: &impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<bytes::Bytes, ModelError> {
        let config = &self.config;
        let fail =
            |kind, message: String| ModelError::new(kind, &config.name, &replica.url, message);
        let mut request = build(&self.http, &replica.url);
        if let Some(key) = &config.api_key {
            request = request.header(reqwest::header::AUTHORIZATION, key.bearer());
        }
        let exchange = async {
            let response = request.send().await.map_err(|e| {
                // Connected but the exchange broke off (a reset, a cut reply): a cut body.
                let kind = if e.is_timeout() {
                    ErrorKind::Timeout
                } else if e.is_connect() {
                    ErrorKind::Connect
                } else {
                    ErrorKind::BodyCut
                };
                fail(kind, transport_message(&e))
            })?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let body = response
                .bytes()
                .await
                .map_err(|e| fail(ErrorKind::BodyCut, transport_message(&e)))?;
            if status.is_success() {
                Ok(body)
            } else {
                let mut error = fail(ErrorKind::Status(status.as_u16()), server_message(&body));
                error.retry_after = retry_after;
                Err(error)
            }
        };
        match tokio::time::timeout(config.timeout, exchange).await {
            Ok(outcome) => outcome,
            Err(_) => Err(fail(
                ErrorKind::Timeout,
                format!("no reply within {:.1} s", config.timeout.as_secs_f64()),
            )),
        }
    }
}

/// A transport error's message, with its causes, without the URL (the error names it).
fn transport_message(error: &reqwest::Error) -> String {
    let mut message = error.without_url_ref();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

trait WithoutUrl {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_ref(&self) -> String {
        let text = self.to_string();
        match text.find(" for url (") {
            Some(i) => text[..i].to_string(),
            None => text,
        }
    }
}

/// Sums `vllm:num_requests_waiting` and `vllm:num_requests_running` in Prometheus text,
/// keeping lines for `model` when they carry a `model_name` label.
#[must_use]
pub fn parse_queue(text: &str, model: &str) -> (f64, f64) {
    let (mut waiting, mut running) = (0.0, 0.0);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name_labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = name_labels.split_once('{').unwrap_or((name_labels, ""));
        if labels.contains("model_name=") && !labels.contains(&format!("model_name=\"{model}\"")) {
            continue;
        }
        match name {
            "vllm:num_requests_waiting" => waiting += value,
            "vllm:num_requests_running" => running += value,
            _ => {}
        }
    }
    (waiting, running)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_lines_of_one_model() {
        let text = "# HELP x\nvllm:num_requests_waiting{model_name=\"a\"} 3\nvllm:num_requests_waiting{model_name=\"b\"} 9\nvllm:num_requests_running{model_name=\"a\"} 16\n";
        assert_eq!(parse_queue(text, "a"), (3.0, 16.0));
        assert_eq!(
            parse_queue("vllm:num_requests_waiting 2\n", "a"),
            (2.0, 0.0)
        );
    }
}
