//! The HTTP server: the routes and shapes of vLLM (chat, embeddings, `/metrics`), vLLM-Omni
//! (`/v1/images/edits`, multipart) and OpenAI, backed by the simulated models, with faults and
//! a capacity model per model.
//!
//! Admission, per model: at most `slots` requests run; up to `queue` more wait (reported as
//! `vllm:num_requests_waiting`); beyond that the reply is 503. A request's service time is
//! slept while it holds its slot, so throughput saturates at `slots / service time`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Multipart, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, oneshot};

use crate::chat::{self, ChatInput, SeenImage};
use crate::codec;
use crate::config::{ModelConfig, Role, SimConfig};
use crate::edit;
use crate::embed;
use crate::generic;
use crate::propose;
use crate::render;
use crate::rng::Rng;

/// Largest request body accepted (images travel base64 inside JSON).
const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;

struct ModelState {
    config: ModelConfig,
    slots: Semaphore,
    waiting: AtomicUsize,
    running: AtomicUsize,
    requests: AtomicU64,
    served: AtomicU64,
    faulted: AtomicU64,
    refused: AtomicU64,
}

struct SimState {
    seed: u64,
    models: HashMap<String, Arc<ModelState>>,
    order: Vec<String>,
}

/// A running simulator; stops when dropped.
#[derive(Debug)]
pub struct SimServer {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SimServer {
    /// Starts a simulator on `addr` (port 0 picks a free port) in the current runtime.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn start(config: SimConfig, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = router(config);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let server = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = rx.await;
            });
            if let Err(error) = server.await {
                tracing::error!(%error, "simulator stopped");
            }
        });
        Ok(Self {
            addr,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// The address it listens on.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The OpenAI base URL, `http://127.0.0.1:PORT/v1`.
    #[must_use]
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Waits until the server stops (for `edir-synth sim`).
    pub async fn wait(mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The router, for embedding the simulator in another server or a test.
pub fn router(config: SimConfig) -> Router {
    let order: Vec<String> = config.models.iter().map(|m| m.name.clone()).collect();
    let models = config
        .models
        .into_iter()
        .map(|m| {
            let slots = Semaphore::new(m.capacity.slots.max(1));
            let state = ModelState {
                config: m,
                slots,
                waiting: AtomicUsize::new(0),
                running: AtomicUsize::new(0),
                requests: AtomicU64::new(0),
                served: AtomicU64::new(0),
                faulted: AtomicU64::new(0),
                refused: AtomicU64::new(0),
            };
            (state.config.name.clone(), Arc::new(state))
        })
        .collect();
    let state = Arc::new(SimState {
        seed: config.seed,
        models,
        order,
    });
    Router::new()
        .route("/health", get(|| async { StatusCode::OK }))
        .route("/v1/models", get(list_models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/images/edits", post(image_edits))
        .route("/metrics", get(metrics))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// vLLM's error body: `{"error": {"message", "type", "param", "code": <int>}}`.
fn vllm_error(
    status: StatusCode,
    message: impl Into<String>,
    kind: &str,
    param: Option<&str>,
) -> Response {
    let body = json!({"error": {"message": message.into(), "type": kind, "param": param, "code": status.as_u16()}});
    (status, axum::Json(body)).into_response()
}

/// `FastAPI`'s error body (vLLM-Omni's edit route): `{"detail": ...}`.
fn fastapi_error(status: StatusCode, detail: impl Into<String>) -> Response {
    (status, axum::Json(json!({"detail": detail.into()}))).into_response()
}

fn with_retry_after(mut response: Response, seconds: u64) -> Response {
    if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

async fn list_models(State(state): State<Arc<SimState>>) -> Response {
    let data: Vec<Value> = state
        .order
        .iter()
        .map(|name| json!({"id": name, "object": "model", "created": now_s(), "owned_by": "edir-sim", "root": name, "parent": null, "max_model_len": 32768}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn metrics(State(state): State<Arc<SimState>>) -> Response {
    let mut text = String::new();
    let families: [(&str, &str, &str); 4] = [
        (
            "vllm:num_requests_running",
            "gauge",
            "Number of requests running on the (simulated) GPU.",
        ),
        (
            "vllm:num_requests_waiting",
            "gauge",
            "Number of requests waiting for a slot.",
        ),
        (
            "vllm:kv_cache_usage_perc",
            "gauge",
            "Fraction of slots in use (stands in for KV-cache use).",
        ),
        ("edir_sim_requests_total", "counter", "Requests by outcome."),
    ];
    for (name, kind, help) in families {
        let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for model_name in &state.order {
            let Some(model) = state.models.get(model_name) else {
                continue;
            };
            let label = format!("model_name=\"{model_name}\"");
            let running = model.running.load(Ordering::Relaxed);
            match name {
                "vllm:num_requests_running" => {
                    let _ = writeln!(text, "{name}{{{label}}} {running}");
                }
                "vllm:num_requests_waiting" => {
                    let _ = writeln!(
                        text,
                        "{name}{{{label}}} {}",
                        model.waiting.load(Ordering::Relaxed)
                    );
                }
                "vllm:kv_cache_usage_perc" => {
                    #[expect(clippy::cast_precision_loss, reason = "a ratio")]
                    let usage = running as f64 / model.config.capacity.slots.max(1) as f64;
                    let _ = writeln!(text, "{name}{{{label}}} {usage:.4}");
                }
                _ => {
                    for (outcome, counter) in [
                        ("served", &model.served),
                        ("faulted", &model.faulted),
                        ("refused", &model.refused),
                    ] {
                        let _ = writeln!(
                            text,
                            "{name}{{{label},outcome=\"{outcome}\"}} {}",
                            counter.load(Ordering::Relaxed)
                        );
                    }
                }
            }
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Transport-level faults, drawn before the model runs.
enum Transport {
    None,
    RateLimit,
    ServerError,
    Unavailable,
    Hang,
    Cut,
}

/// Content faults of a chat reply.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ContentFault {
    None,
    InvalidJson,
    TruncatedJson,
    SchemaViolation,
    CodeFence,
    Infeasible,
    WrongEdit,
}

struct Draw {
    transport: Transport,
    content: ContentFault,
    rng: Rng,
}

fn draw(state: &SimState, model: &ModelState) -> Draw {
    let n = model.requests.fetch_add(1, Ordering::Relaxed);
    let name_hash = u64::from_le_bytes(
        blake3::hash(model.config.name.as_bytes()).as_bytes()[..8]
            .try_into()
            .unwrap_or([0; 8]),
    );
    let mut rng = Rng::from_parts(&[state.seed, name_hash, n]);
    let f = &model.config.faults;
    let u = rng.unit();
    let transport_table = [
        (f.rate_limit, 1u8),
        (f.server_error, 2),
        (f.unavailable, 3),
        (f.hang, 4),
        (f.cut, 5),
        (f.invalid_json, 6),
        (f.truncated_json, 7),
        (f.schema_violation, 8),
        (f.code_fence, 9),
        (f.infeasible, 10),
        (f.wrong_edit, 11),
    ];
    let mut acc = 0.0;
    let mut hit = 0u8;
    for (p, code) in transport_table {
        acc += p;
        if u < acc {
            hit = code;
            break;
        }
    }
    let transport = match hit {
        1 => Transport::RateLimit,
        2 => Transport::ServerError,
        3 => Transport::Unavailable,
        4 => Transport::Hang,
        5 => Transport::Cut,
        _ => Transport::None,
    };
    let content = match hit {
        6 => ContentFault::InvalidJson,
        7 => ContentFault::TruncatedJson,
        8 => ContentFault::SchemaViolation,
        9 => ContentFault::CodeFence,
        10 => ContentFault::Infeasible,
        11 => ContentFault::WrongEdit,
        _ => ContentFault::None,
    };
    Draw {
        transport,
        content,
        rng,
    }
}

/// Applies a transport fault, or `None` to go on.
async fn transport_fault(
    model: &ModelState,
    transport: &Transport,
    edit_route: bool,
) -> Option<Response> {
    let f = &model.config.faults;
    let error = |status: StatusCode, message: &str, kind: &str| {
        if edit_route {
            fastapi_error(status, message)
        } else {
            vllm_error(status, message, kind, None)
        }
    };
    let response = match transport {
        Transport::None => return None,
        Transport::RateLimit => with_retry_after(
            error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate limit exceeded (simulated)",
                "RateLimitError",
            ),
            f.retry_after_s,
        ),
        Transport::ServerError => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal server error (simulated)",
            "InternalServerError",
        ),
        Transport::Unavailable => with_retry_after(
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server overloaded (simulated)",
                "ServiceUnavailableError",
            ),
            f.retry_after_s,
        ),
        Transport::Hang => {
            tokio::time::sleep(Duration::from_secs(f.hang_s.max(1))).await;
            error(
                StatusCode::GATEWAY_TIMEOUT,
                "gave up (simulated hang)",
                "Timeout",
            )
        }
        Transport::Cut => {
            let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
                Ok(Bytes::from_static(b"{\"id\": \"cut\", \"choices\": [")),
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "simulated cut",
                )),
            ];
            let body = Body::from_stream(futures_util::stream::iter(chunks));
            let mut response = Response::new(body);
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("4096"));
            response
        }
    };
    model.faulted.fetch_add(1, Ordering::Relaxed);
    Some(response)
}

/// Holds a slot for the request's service time; `None` when the queue is full.
struct Admission<'a> {
    model: &'a ModelState,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.model.running.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn admit(model: &ModelState) -> Option<Admission<'_>> {
    let waiting = model.waiting.fetch_add(1, Ordering::Relaxed);
    if waiting >= model.config.capacity.queue && model.slots.available_permits() == 0 {
        model.waiting.fetch_sub(1, Ordering::Relaxed);
        model.refused.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let permit = model.slots.acquire().await.ok();
    model.waiting.fetch_sub(1, Ordering::Relaxed);
    let permit = permit?;
    model.running.fetch_add(1, Ordering::Relaxed);
    Some(Admission {
        model,
        _permit: permit,
    })
}

/// Every route's way in: draw this request's faults, apply a transport fault, then wait for a
/// slot (503 in the route's error shape when the queue is full).
async fn enter<'a>(
    state: &SimState,
    model: &'a ModelState,
    edit_route: bool,
) -> Result<(Draw, Admission<'a>), Response> {
    let draw = draw(state, model);
    if let Some(response) = transport_fault(model, &draw.transport, edit_route).await {
        return Err(response);
    }
    let Some(admission) = admit(model).await else {
        let message = "the server's queue is full";
        let error = if edit_route {
            fastapi_error(StatusCode::SERVICE_UNAVAILABLE, message)
        } else {
            vllm_error(
                StatusCode::SERVICE_UNAVAILABLE,
                message,
                "ServiceUnavailableError",
                None,
            )
        };
        return Err(with_retry_after(error, 1));
    };
    Ok((draw, admission))
}

async fn service(ms: f64) {
    if ms > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(ms / 1000.0)).await;
    }
}

#[expect(clippy::result_large_err, reason = "the error is the reply, sent once")]
fn lookup<'a>(
    state: &'a SimState,
    body: &Value,
    role: Role,
    edit_route: bool,
) -> Result<&'a Arc<ModelState>, Response> {
    let name = body.get("model").and_then(Value::as_str).unwrap_or("");
    let not_found = |message: String| {
        if edit_route {
            fastapi_error(StatusCode::NOT_FOUND, message)
        } else {
            vllm_error(
                StatusCode::NOT_FOUND,
                message,
                "NotFoundError",
                Some("model"),
            )
        }
    };
    match state.models.get(name) {
        Some(model) if model.config.role == role => Ok(model),
        Some(_) => Err(not_found(format!(
            "The model `{name}` does not serve this route."
        ))),
        None => Err(not_found(format!("The model `{name}` does not exist."))),
    }
}

/// Reads an image URL of a chat or embedding request: a data URL or a `file://` path.
fn fetch_image(url: &str) -> Result<Vec<u8>, String> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (_, data) = rest
            .split_once(";base64,")
            .ok_or("image data URLs must be base64")?;
        return base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| format!("invalid base64 image: {e}"));
    }
    if let Some(path) = url.strip_prefix("file://") {
        return std::fs::read(path).map_err(|e| format!("cannot read local image `{path}`: {e}"));
    }
    Err(format!(
        "unsupported image URL `{}` (data: and file:// only; the simulator reaches no network)",
        url.chars().take(40).collect::<String>()
    ))
}

fn seen(bytes: &[u8]) -> SeenImage {
    SeenImage {
        scene: codec::read_scene(bytes),
        digest: *blake3::hash(bytes).as_bytes(),
    }
}

/// Text and images of OpenAI-style messages.
fn read_messages(messages: &[Value]) -> Result<(String, Vec<SeenImage>), String> {
    let mut text = String::new();
    let mut images = Vec::new();
    for message in messages {
        match message.get("content") {
            Some(Value::String(s)) => {
                text.push_str(s);
                text.push('\n');
            }
            Some(Value::Array(parts)) => {
                for part in parts {
                    match part.get("type").and_then(Value::as_str) {
                        Some("text") => {
                            text.push_str(part.get("text").and_then(Value::as_str).unwrap_or(""));
                            text.push('\n');
                        }
                        Some("image_url") => {
                            let url = part
                                .pointer("/image_url/url")
                                .and_then(Value::as_str)
                                .ok_or("an `image_url` part needs `image_url.url`")?;
                            images.push(seen(&fetch_image(url)?));
                        }
                        Some(other) => {
                            return Err(format!("unsupported content part type `{other}`"));
                        }
                        None => return Err("a content part needs a `type`".to_string()),
                    }
                }
            }
            Some(Value::Null) | None => {}
            Some(_) => return Err("`content` must be a string or a list of parts".to_string()),
        }
    }
    Ok((text, images))
}

fn tokens(text_len: usize) -> u64 {
    (text_len as u64).div_ceil(4).max(1)
}

async fn chat_completions(State(state): State<Arc<SimState>>, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return vllm_error(
            StatusCode::BAD_REQUEST,
            "request body is not valid JSON",
            "BadRequestError",
            None,
        );
    };
    let model = match lookup(&state, &body, Role::Chat, false) {
        Ok(model) => Arc::clone(model),
        Err(response) => return response,
    };
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        return vllm_error(
            StatusCode::BAD_REQUEST,
            "streaming is not simulated",
            "BadRequestError",
            Some("stream"),
        );
    }
    let Some(messages) = body.get("messages").and_then(Value::as_array) else {
        return vllm_error(
            StatusCode::BAD_REQUEST,
            "`messages` is required",
            "BadRequestError",
            Some("messages"),
        );
    };
    let (mut draw, admission) = match enter(&state, &model, false).await {
        Ok(entered) => entered,
        Err(response) => return response,
    };
    let (text, images) = match read_messages(messages) {
        Ok(read) => read,
        Err(message) => {
            return vllm_error(
                StatusCode::BAD_REQUEST,
                message,
                "BadRequestError",
                Some("messages"),
            );
        }
    };
    let schema = body
        .pointer("/response_format/json_schema/schema")
        .or_else(|| body.pointer("/structured_outputs/json"))
        .or_else(|| body.get("guided_json"));
    let schema_name = body
        .pointer("/response_format/json_schema/name")
        .and_then(Value::as_str)
        .or_else(|| schema.and_then(|s| s.get("title")).and_then(Value::as_str));
    let seed = body
        .get("seed")
        .and_then(Value::as_u64)
        .unwrap_or_else(|| draw.rng.next_u64());
    let mut content = chat::reply(&ChatInput {
        text: &text,
        images: &images,
        schema_name,
        schema,
        seed,
    });
    let is_json = schema.is_some();
    match draw.content {
        ContentFault::InvalidJson if is_json => {
            content = "I am sorry, I cannot produce JSON for this image.".to_string();
        }
        ContentFault::TruncatedJson if is_json => {
            let cut = content.len() * 2 / 3;
            content.truncate(
                content
                    .char_indices()
                    .map(|(i, _)| i)
                    .take_while(|i| *i <= cut)
                    .last()
                    .unwrap_or(0),
            );
        }
        ContentFault::SchemaViolation if is_json => {
            if let Ok(Value::Object(mut map)) = serde_json::from_str::<Value>(&content) {
                if let Some(first) = schema
                    .and_then(|s| s.get("required"))
                    .and_then(Value::as_array)
                    .and_then(|r| r.first())
                    .and_then(Value::as_str)
                {
                    map.remove(first);
                }
                content = Value::Object(map).to_string();
            }
        }
        ContentFault::CodeFence if is_json => {
            content = format!("Here is the JSON:\n```json\n{content}\n```");
        }
        ContentFault::Infeasible if schema_name == Some("edit_instruction") => {
            content = json!({"feasible": false, "subject": "", "edit": "", "visual_check": "", "extra_changes": [], "reason": "the image does not allow this edit (simulated)"}).to_string();
        }
        _ => {}
    }
    if draw.content != ContentFault::None {
        model.faulted.fetch_add(1, Ordering::Relaxed);
    }
    let prompt_tokens = tokens(text.len()) + 256 * images.len() as u64;
    let completion_tokens = tokens(content.len());
    #[expect(clippy::cast_precision_loss, reason = "service time")]
    service(
        model.config.capacity.base_ms
            + model.config.capacity.per_token_ms * completion_tokens as f64,
    )
    .await;
    drop(admission);
    model.served.fetch_add(1, Ordering::Relaxed);
    let thinking = body
        .pointer("/chat_template_kwargs/enable_thinking")
        .and_then(Value::as_bool)
        == Some(true);
    let reasoning =
        thinking.then(|| "Simulated reasoning: look at the image, then answer.".to_string());
    let id = format!("chatcmpl-sim-{}", draw.rng.next_u64());
    let reply = json!({
        "id": id,
        "object": "chat.completion",
        "created": now_s(),
        "model": model.config.name,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "reasoning_content": reasoning, "tool_calls": []},
            "logprobs": null,
            "finish_reason": "stop",
            "stop_reason": null
        }],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens, "prompt_tokens_details": null},
        "prompt_logprobs": null
    });
    axum::Json(reply).into_response()
}

async fn embeddings(State(state): State<Arc<SimState>>, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return vllm_error(
            StatusCode::BAD_REQUEST,
            "request body is not valid JSON",
            "BadRequestError",
            None,
        );
    };
    let model = match lookup(&state, &body, Role::Embed, false) {
        Ok(model) => Arc::clone(model),
        Err(response) => return response,
    };
    let (_draw, admission) = match enter(&state, &model, false).await {
        Ok(entered) => entered,
        Err(response) => return response,
    };
    let style = model
        .config
        .embed_style
        .unwrap_or(embed::EmbedStyle::Compose);
    let dim = body
        .get("dimensions")
        .and_then(Value::as_u64)
        .map_or(model.config.dim, |d| {
            usize::try_from(d).unwrap_or(model.config.dim)
        });
    let mut vectors: Vec<Vec<f32>> = Vec::new();
    let mut prompt_chars = 0usize;
    if let Some(messages) = body.get("messages").and_then(Value::as_array) {
        let (text, images) = match read_messages(messages) {
            Ok(read) => read,
            Err(message) => {
                return vllm_error(
                    StatusCode::BAD_REQUEST,
                    message,
                    "BadRequestError",
                    Some("messages"),
                );
            }
        };
        prompt_chars += text.len();
        let image = images.first();
        vectors.push(embed::embed(
            style,
            image.and_then(|i| i.scene.as_ref()),
            image.map(|i| &i.digest),
            text.trim(),
            dim,
            model.config.noise,
            &model.config.name,
        ));
    } else {
        let inputs: Vec<String> = match body.get("input") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
                .iter()
                .filter_map(Value::as_str)
                .map(ToString::to_string)
                .collect(),
            _ => {
                return vllm_error(
                    StatusCode::BAD_REQUEST,
                    "`input` must be a string or a list of strings (or send `messages`)",
                    "BadRequestError",
                    Some("input"),
                );
            }
        };
        for input in &inputs {
            prompt_chars += input.len();
            vectors.push(embed::embed(
                style,
                None,
                None,
                input,
                dim,
                model.config.noise,
                &model.config.name,
            ));
        }
    }
    #[expect(clippy::cast_precision_loss, reason = "service time")]
    service(
        model.config.capacity.base_ms
            + model.config.capacity.per_token_ms * tokens(prompt_chars) as f64,
    )
    .await;
    drop(admission);
    model.served.fetch_add(1, Ordering::Relaxed);
    let base64_format = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64_format {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let prompt_tokens = tokens(prompt_chars);
    axum::Json(json!({"id": format!("embd-sim-{}", model.requests.load(Ordering::Relaxed)), "object": "list", "created": now_s(), "model": model.config.name, "data": data, "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}})).into_response()
}

/// The fields of an edit request.
#[derive(Default)]
struct EditForm {
    images: Vec<Vec<u8>>,
    prompt: String,
    model: String,
    seed: Option<u64>,
    size: Option<(u32, u32)>,
    output_format: String,
    response_format: String,
}

async fn read_edit_form(mut multipart: Multipart) -> Result<EditForm, String> {
    let mut form = EditForm {
        output_format: "png".into(),
        response_format: "b64_json".into(),
        ..EditForm::default()
    };
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| format!("invalid multipart body: {e}"))?
    {
        let name = field.name().unwrap_or("").to_string();
        match name.as_str() {
            "image" | "image[]" => form
                .images
                .push(field.bytes().await.map_err(|e| e.to_string())?.to_vec()),
            "prompt" | "model" | "seed" | "size" | "output_format" | "response_format" => {
                let value = field.text().await.map_err(|e| e.to_string())?;
                match name.as_str() {
                    "prompt" => form.prompt = value,
                    "model" => form.model = value,
                    "seed" => form.seed = value.trim().parse().ok(),
                    "size" => {
                        form.size = value.split_once('x').and_then(|(w, h)| {
                            Some((w.trim().parse().ok()?, h.trim().parse().ok()?))
                        });
                    }
                    "output_format" => form.output_format = value,
                    _ => form.response_format = value,
                }
            }
            // Diffusion settings (steps, guidance, negative prompt, n, ...) are accepted and ignored.
            _ => {
                let _ = field.bytes().await;
            }
        }
    }
    Ok(form)
}

async fn image_edits(State(state): State<Arc<SimState>>, multipart: Multipart) -> Response {
    let form = match read_edit_form(multipart).await {
        Ok(form) => form,
        Err(message) => return fastapi_error(StatusCode::BAD_REQUEST, message),
    };
    let model = match lookup(&state, &json!({"model": form.model}), Role::Edit, true) {
        Ok(model) => Arc::clone(model),
        Err(response) => return response,
    };
    let Some(image) = form.images.first() else {
        return fastapi_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "field `image` is required",
        );
    };
    if form.prompt.trim().is_empty() {
        return fastapi_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "field `prompt` is required",
        );
    }
    let (mut draw, admission) = match enter(&state, &model, true).await {
        Ok(entered) => entered,
        Err(response) => return response,
    };
    let seed = form.seed.unwrap_or_else(|| draw.rng.next_u64());
    let wrong = draw.content == ContentFault::WrongEdit;
    let image = image.clone();
    let prompt = form.prompt.clone();
    let size = form.size;
    let jpeg = form.output_format.eq_ignore_ascii_case("jpeg")
        || form.output_format.eq_ignore_ascii_case("jpg");
    // A small picture (the benchmarks' 64 px scenes) renders in well under a millisecond:
    // right here, which costs less than the hand-off to a blocking thread and back.
    let small = image.len() <= INLINE_EDIT_BYTES
        && size.is_none_or(|(w, h)| u64::from(w) * u64::from(h) <= INLINE_EDIT_PIXELS);
    let made = if small {
        Ok(edit_image(&image, &prompt, size, seed, wrong, jpeg))
    } else {
        tokio::task::spawn_blocking(move || edit_image(&image, &prompt, size, seed, wrong, jpeg))
            .await
    };
    let (bytes, megapixels) = match made {
        Ok(Ok(made)) => made,
        Ok(Err(message)) => return fastapi_error(StatusCode::BAD_REQUEST, message),
        Err(error) => {
            return fastapi_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("edit failed: {error}"),
            );
        }
    };
    if wrong {
        model.faulted.fetch_add(1, Ordering::Relaxed);
    }
    service(model.config.capacity.base_ms + model.config.capacity.per_megapixel_ms * megapixels)
        .await;
    drop(admission);
    model.served.fetch_add(1, Ordering::Relaxed);
    if form.response_format == "url" {
        return fastapi_error(
            StatusCode::BAD_REQUEST,
            "response_format `url` is not supported; use `b64_json`",
        );
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    axum::Json(json!({"created": now_s(), "data": [{"b64_json": b64, "revised_prompt": null}], "output_format": if jpeg { "jpeg" } else { "png" }})).into_response()
}

/// The editor: scene images are edited in their scene and re-rendered; other photos get a
/// generic pixel edit. Returns the encoded image and its megapixels.
/// Inputs up to this size (and outputs up to `INLINE_EDIT_PIXELS`) are edited on the async
/// thread that serves the request.
const INLINE_EDIT_BYTES: usize = 32 * 1024;
const INLINE_EDIT_PIXELS: u64 = 128 * 128;

fn edit_image(
    image: &[u8],
    prompt: &str,
    size: Option<(u32, u32)>,
    seed: u64,
    wrong: bool,
    jpeg: bool,
) -> Result<(Vec<u8>, f64), String> {
    let encode = |pixels: &render::Pixels, scene: Option<&crate::scene::Scene>| {
        if jpeg {
            codec::encode_jpeg(pixels)
        } else {
            codec::encode_png(pixels, scene)
        }
        .map_err(|e| e.to_string())
    };
    let megapixels = |p: &render::Pixels| f64::from(p.width) * f64::from(p.height) / 1e6;
    if let Some(mut scene) = codec::read_scene(image) {
        let mut rng = Rng::from_parts(&[
            seed,
            u64::from(blake3::hash(prompt.as_bytes()).as_bytes()[0]),
        ]);
        let edited = if wrong {
            // A wrong edit: something other than what was asked.
            let label = *rng.pick(&[
                "color", "material", "texture", "addition", "time", "weather",
            ]);
            let mut other = scene.clone();
            if let Ok(edit) = propose::propose_simple(&scene, label, &mut rng) {
                let _ = edit.apply(&mut other);
            }
            other
        } else {
            // What the editor cannot understand or apply, it leaves alone (a no-op edit).
            edit::apply_instruction(&scene, prompt).unwrap_or_else(|_| scene.clone())
        };
        scene = edited;
        if let Some((w, h)) = size {
            scene.width = w.clamp(16, 4096);
            scene.height = h.clamp(16, 4096);
        }
        let pixels = render::render(&scene);
        return Ok((encode(&pixels, Some(&scene))?, megapixels(&pixels)));
    }
    let (mut pixels, _) = codec::decode(image).map_err(|e| e.to_string())?;
    let mut applied = false;
    for sentence in edit::sentences(prompt) {
        if let Some((label, region)) = generic::parse(&sentence) {
            generic::apply(&mut pixels, &label, &region);
            applied = true;
        }
    }
    if !applied {
        generic::apply(
            &mut pixels,
            if wrong { "style" } else { "color" },
            "central area",
        );
    }
    Ok((encode(&pixels, None)?, megapixels(&pixels)))
}
