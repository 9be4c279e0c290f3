//! Every rung of the structured-output repair ladder, and its final failure.

use std::sync::atomic::Ordering;

use edir_model::{ChatRequest, Endpoint, ErrorKind, Message, Role, Rung, SchemaCheck};
use serde_json::json;

use crate::clients::config;
use crate::scripted::{Reply, serve};

fn schema() -> SchemaCheck {
    SchemaCheck::new(&json!({"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"], "additionalProperties": false})).unwrap()
}

async fn climb(
    script: Vec<Reply>,
) -> (
    Result<edir_model::StructuredReply, edir_model::ModelError>,
    usize,
) {
    let server = serve(script).await;
    let endpoint = Endpoint::new(config("llm", "m", vec![server.base_url.clone()])).unwrap();
    let request = ChatRequest {
        messages: vec![Message::text(Role::User, "write a query")],
        schema: Some(("q".into(), json!({}))),
        seed: Some(5),
        ..ChatRequest::default()
    };
    let result = endpoint.chat_json(&request, &schema()).await;
    (result, server.hits.load(Ordering::SeqCst))
}

#[tokio::test]
async fn strict() {
    let (reply, calls) = climb(vec![Reply::Content(r#"{"query": "at night"}"#)]).await;
    let reply = reply.unwrap();
    assert_eq!((reply.rung, calls), (Rung::Strict, 1));
    assert_eq!(reply.value, json!({"query": "at night"}));
}

#[tokio::test]
async fn lenient() {
    let (reply, calls) = climb(vec![Reply::Content(
        "Sure:\n```json\n{\"query\": \"at night\",}\n```",
    )])
    .await;
    assert_eq!((reply.unwrap().rung, calls), (Rung::Lenient, 1));
}

#[tokio::test]
async fn correction() {
    let (reply, calls) = climb(vec![
        Reply::Content(r#"{"text": "at night"}"#),
        Reply::Content(r#"{"query": "at night"}"#),
    ])
    .await;
    let reply = reply.unwrap();
    assert_eq!((reply.rung, calls), (Rung::Correction, 2));
    assert_eq!(reply.prompt_tokens, 20, "tokens of both calls are counted");
}

#[tokio::test]
async fn resample() {
    let (reply, calls) = climb(vec![
        Reply::Content("no"),
        Reply::Content("still no"),
        Reply::Content(r#"{"query": "x"}"#),
    ])
    .await;
    assert_eq!((reply.unwrap().rung, calls), (Rung::Resample, 3));
}

#[tokio::test]
async fn final_failure_is_invalid_output() {
    let (reply, calls) = climb(vec![Reply::Content(r#"{"query": 3}"#)]).await;
    let error = reply.unwrap_err();
    assert_eq!(error.kind, ErrorKind::InvalidOutput);
    assert_eq!(error.class(), "invalid_output");
    assert!(!error.is_retryable());
    assert!(error.message.contains("(at `/query`)"), "{}", error.message);
    assert_eq!(calls, 3);
}
