//! A scripted OpenAI-style server: replies from a list, in order (the last repeats), counting
//! requests, so tests know exactly how often a client sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

/// One scripted reply.
#[derive(Clone)]
pub(crate) enum Reply {
    /// 200 with a chat completion whose content is this.
    Content(&'static str),
    /// A status with a vLLM error body and an optional `Retry-After`.
    Status(u16, Option<&'static str>),
}

pub(crate) struct Scripted {
    pub(crate) base_url: String,
    pub(crate) hits: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

pub(crate) async fn serve(script: Vec<Reply>) -> Scripted {
    let hits = Arc::new(AtomicUsize::new(0));
    let script = Arc::new(script);
    let counter = Arc::clone(&hits);
    let app = Router::new()
        .route("/health", get(|| async { StatusCode::OK }))
        .route(
            "/v1/models",
            get(|| async {
                axum::Json(json!({"object": "list", "data": [{"id": "m", "object": "model"}]}))
            }),
        )
        .route(
            "/v1/chat/completions",
            post(move || {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let reply = script[n.min(script.len() - 1)].clone();
                async move { respond(reply) }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Scripted {
        base_url: format!("http://{addr}/v1"),
        hits,
        _task: task,
    }
}

fn respond(reply: Reply) -> Response {
    match reply {
        Reply::Content(content) => axum::Json(json!({
            "id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        }))
        .into_response(),
        Reply::Status(code, retry_after) => {
            let status = StatusCode::from_u16(code).unwrap();
            let mut response = (status, axum::Json(json!({"error": {"message": format!("scripted {code}"), "type": "X", "param": null, "code": code}}))).into_response();
            if let Some(after) = retry_after {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(after));
            }
            response
        }
    }
}
