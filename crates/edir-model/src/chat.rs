//! Chat completions with text and images, JSON-schema output (`response_format` or vLLM's
//! `structured_outputs`), Qwen3's `chat_template_kwargs` and `reasoning_content`.

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::endpoint::Endpoint;
use crate::error::{ErrorKind, ModelError};

/// Who speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The system prompt.
    System,
    /// The user.
    User,
    /// The model (for correction turns).
    Assistant,
}

/// A piece of a message.
#[derive(Debug, Clone)]
pub enum Part {
    /// Text.
    Text(String),
    /// An image sent inline as a data URL.
    Image {
        /// Encoded bytes (PNG, JPEG, WebP).
        bytes: Arc<Vec<u8>>,
        /// MIME type, e.g. `image/png`.
        mime: String,
    },
    /// An image the server reads from its disk (`file://`; vLLM's `--allowed-local-media-path`).
    LocalImage(PathBuf),
}

/// A message.
#[derive(Debug, Clone)]
pub struct Message {
    /// Who.
    pub role: Role,
    /// What.
    pub parts: Vec<Part>,
}

impl Message {
    /// A text message.
    #[must_use]
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Self {
            role,
            parts: vec![Part::Text(text.into())],
        }
    }
}

/// How structured output is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SchemaStyle {
    /// OpenAI's `response_format: {type: json_schema, ...}` (vLLM accepts it too).
    #[default]
    ResponseFormat,
    /// vLLM's `structured_outputs: {json: schema}`.
    StructuredOutputs,
}

/// A chat request.
#[derive(Debug, Clone, Default)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<Message>,
    /// Reply schema: name and JSON schema.
    pub schema: Option<(String, Value)>,
    /// How to send the schema.
    pub schema_style: SchemaStyle,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    pub top_p: Option<f64>,
    /// Completion token limit.
    pub max_tokens: Option<u32>,
    /// Presence penalty.
    pub presence_penalty: Option<f64>,
    /// vLLM repetition penalty.
    pub repetition_penalty: Option<f64>,
    /// Seed.
    pub seed: Option<u64>,
    /// Qwen3 thinking (`chat_template_kwargs.enable_thinking`).
    pub thinking: Option<bool>,
}

/// A chat reply.
#[derive(Debug, Clone)]
pub struct ChatReply {
    /// The content.
    pub content: String,
    /// Qwen3's reasoning, when thinking was on.
    pub reasoning: Option<String>,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// The replica that answered.
    pub replica: String,
    /// Latency of the successful attempt.
    pub latency: std::time::Duration,
    /// Attempts made.
    pub attempts: u32,
}

impl ChatRequest {
    /// Images in the request.
    #[must_use]
    pub fn image_count(&self) -> usize {
        self.messages
            .iter()
            .flat_map(|m| &m.parts)
            .filter(|p| !matches!(p, Part::Text(_)))
            .count()
    }

    /// The JSON body for `model`.
    #[must_use]
    pub fn body(&self, model: &str) -> Value {
        let messages: Vec<Value> = self
            .messages
            .iter()
            .map(|m| {
                let role = match m.role {
                    Role::System => "system",
                    Role::User => "user",
                    Role::Assistant => "assistant",
                };
                let content: Value = match m.parts.as_slice() {
                    [Part::Text(text)] => json!(text),
                    parts => Value::Array(
                        parts
                            .iter()
                            .map(|p| match p {
                                Part::Text(text) => json!({"type": "text", "text": text}),
                                Part::Image { bytes, mime } => {
                                    let data = base64::engine::general_purpose::STANDARD.encode(bytes.as_slice());
                                    json!({"type": "image_url", "image_url": {"url": format!("data:{mime};base64,{data}")}})
                                }
                                Part::LocalImage(path) => json!({"type": "image_url", "image_url": {"url": format!("file://{}", path.display())}}),
                            })
                            .collect(),
                    ),
                };
                json!({"role": role, "content": content})
            })
            .collect();
        let mut body = json!({"model": model, "messages": messages, "stream": false});
        let mut set = |key: &str, value: Value| {
            body[key] = value;
        };
        if let Some((name, schema)) = &self.schema {
            match self.schema_style {
                SchemaStyle::ResponseFormat => set(
                    "response_format",
                    json!({"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": true}}),
                ),
                SchemaStyle::StructuredOutputs => {
                    set("structured_outputs", json!({"json": schema}));
                }
            }
        }
        if let Some(v) = self.temperature {
            set("temperature", json!(v));
        }
        if let Some(v) = self.top_p {
            set("top_p", json!(v));
        }
        if let Some(v) = self.max_tokens {
            set("max_tokens", json!(v));
        }
        if let Some(v) = self.presence_penalty {
            set("presence_penalty", json!(v));
        }
        if let Some(v) = self.repetition_penalty {
            set("repetition_penalty", json!(v));
        }
        if let Some(v) = self.seed {
            set("seed", json!(v));
        }
        if let Some(v) = self.thinking {
            set("chat_template_kwargs", json!({"enable_thinking": v}));
        }
        body
    }
}

impl Endpoint {
    /// One chat completion (with retries and failover).
    ///
    /// # Errors
    /// [`ModelError`] with the class of the last failure; [`ErrorKind::Decode`] when the reply
    /// is not a chat completion.
    pub async fn chat(&self, request: &ChatRequest) -> Result<ChatReply, ModelError> {
        let body = bytes::Bytes::from(
            serde_json::to_vec(&request.body(&self.config.model)).unwrap_or_default(),
        );
        let estimate = u64::try_from(body.len() / 4).unwrap_or(u64::MAX);
        let raw = self
            .send(
                |http, base| {
                    http.post(format!("{base}/chat/completions"))
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(body.clone())
                },
                estimate,
            )
            .await?;
        let decode = |message: String| {
            ModelError::new(ErrorKind::Decode, &self.config.name, &raw.replica, message)
        };
        let value: Value =
            serde_json::from_slice(&raw.body).map_err(|e| decode(format!("not JSON: {e}")))?;
        let message = value
            .pointer("/choices/0/message")
            .ok_or_else(|| decode("no `choices[0].message`".into()))?;
        let content = message
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let reasoning = message
            .get("reasoning_content")
            .or_else(|| message.get("reasoning"))
            .and_then(Value::as_str)
            .map(ToString::to_string);
        let prompt_tokens = value
            .pointer("/usage/prompt_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let completion_tokens = value
            .pointer("/usage/completion_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        self.stats.usage(
            prompt_tokens,
            completion_tokens,
            request.image_count() as u64,
            0,
        );
        Ok(ChatReply {
            content,
            reasoning,
            prompt_tokens,
            completion_tokens,
            replica: raw.replica,
            latency: raw.latency,
            attempts: raw.attempts,
        })
    }
}
