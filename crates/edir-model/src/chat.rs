//! Chat completions with text and images, JSON-schema output (`response_format` or vLLM's
//! `structured_outputs`), Qwen3's `chat_template_kwargs` and `reasoning_content`.

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use serde_json::Value;

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

    /// The JSON body for `model`, as a value (what [`ChatRequest::body_bytes`] sends).
    #[must_use]
    pub fn body(&self, model: &str) -> Value {
        serde_json::to_value(self.wire(model)).unwrap_or(Value::Null)
    }

    /// The JSON body for `model`, serialized straight from the request (no intermediate
    /// JSON value, no copy of the schema; an image is base64-encoded once, into its URL).
    #[must_use]
    pub fn body_bytes(&self, model: &str) -> Vec<u8> {
        serde_json::to_vec(&self.wire(model)).unwrap_or_default()
    }

    fn wire<'a>(&'a self, model: &'a str) -> WireBody<'a> {
        let (response_format, structured_outputs) = match (&self.schema, self.schema_style) {
            (None, _) => (None, None),
            (Some((name, schema)), SchemaStyle::ResponseFormat) => (
                Some(WireResponseFormat {
                    kind: "json_schema",
                    json_schema: WireJsonSchema {
                        name,
                        schema,
                        strict: true,
                    },
                }),
                None,
            ),
            (Some((_, schema)), SchemaStyle::StructuredOutputs) => {
                (None, Some(WireStructured { json: schema }))
            }
        };
        WireBody {
            model,
            messages: self.messages.iter().map(WireMessage).collect(),
            stream: false,
            response_format,
            structured_outputs,
            temperature: self.temperature,
            top_p: self.top_p,
            max_tokens: self.max_tokens,
            presence_penalty: self.presence_penalty,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
            chat_template_kwargs: self.thinking.map(|v| WireThinking { enable_thinking: v }),
        }
    }
}

/// A chat body as sent: borrowed from the request.
#[derive(serde::Serialize)]
struct WireBody<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<WireResponseFormat<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    structured_outputs: Option<WireStructured<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    repetition_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chat_template_kwargs: Option<WireThinking>,
}

#[derive(serde::Serialize)]
struct WireResponseFormat<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    json_schema: WireJsonSchema<'a>,
}

#[derive(serde::Serialize)]
struct WireJsonSchema<'a> {
    name: &'a str,
    schema: &'a Value,
    strict: bool,
}

#[derive(serde::Serialize)]
struct WireStructured<'a> {
    json: &'a Value,
}

#[derive(serde::Serialize)]
struct WireThinking {
    enable_thinking: bool,
}

/// `{"role": .., "content": ..}`: one text part is sent as a string, anything else as parts.
struct WireMessage<'a>(&'a Message);

impl serde::Serialize for WireMessage<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let role = match self.0.role {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("role", role)?;
        match self.0.parts.as_slice() {
            [Part::Text(text)] => map.serialize_entry("content", text)?,
            parts => {
                let parts: Vec<WirePart<'_>> = parts.iter().map(WirePart).collect();
                map.serialize_entry("content", &parts)?;
            }
        }
        map.end()
    }
}

/// A content part: `{"type": "text", ..}` or `{"type": "image_url", ..}`.
struct WirePart<'a>(&'a Part);

impl serde::Serialize for WirePart<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        #[derive(serde::Serialize)]
        struct Url {
            url: String,
        }
        let mut map = serializer.serialize_map(Some(2))?;
        match self.0 {
            Part::Text(text) => {
                map.serialize_entry("type", "text")?;
                map.serialize_entry("text", text)?;
            }
            Part::Image { bytes, mime } => {
                let mut url = String::with_capacity(mime.len() + 13 + bytes.len().div_ceil(3) * 4);
                url.push_str("data:");
                url.push_str(mime);
                url.push_str(";base64,");
                base64::engine::general_purpose::STANDARD.encode_string(bytes.as_slice(), &mut url);
                map.serialize_entry("type", "image_url")?;
                map.serialize_entry("image_url", &Url { url })?;
            }
            Part::LocalImage(path) => {
                map.serialize_entry("type", "image_url")?;
                map.serialize_entry(
                    "image_url",
                    &Url {
                        url: format!("file://{}", path.display()),
                    },
                )?;
            }
        }
        map.end()
    }
}

impl Endpoint {
    /// One chat completion (with retries and failover).
    ///
    /// # Errors
    /// [`ModelError`] with the class of the last failure; [`ErrorKind::Decode`] when the reply
    /// is not a chat completion.
    pub async fn chat(&self, request: &ChatRequest) -> Result<ChatReply, ModelError> {
        let body = bytes::Bytes::from(request.body_bytes(&self.config.model));
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The body as it was built before the wire form: a `json!` value per field.
    fn body_by_value(request: &ChatRequest, model: &str) -> Value {
        let messages: Vec<Value> = request
            .messages
            .iter()
            .map(|m| {
                let role = match m.role {
                    Role::System => "system",
                    Role::User => "user",
                    Role::Assistant => "assistant",
                };
                let content = match m.parts.as_slice() {
                    [Part::Text(text)] => json!(text),
                    parts => Value::Array(
                        parts
                            .iter()
                            .map(|p| match p {
                                Part::Text(text) => json!({"type": "text", "text": text}),
                                Part::Image { bytes, mime } => {
                                    let data = base64::engine::general_purpose::STANDARD
                                        .encode(bytes.as_slice());
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
        if let Some((name, schema)) = &request.schema {
            match request.schema_style {
                SchemaStyle::ResponseFormat => {
                    body["response_format"] = json!({"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": true}});
                }
                SchemaStyle::StructuredOutputs => {
                    body["structured_outputs"] = json!({"json": schema});
                }
            }
        }
        for (key, value) in [
            ("temperature", request.temperature.map(|v| json!(v))),
            ("top_p", request.top_p.map(|v| json!(v))),
            ("max_tokens", request.max_tokens.map(|v| json!(v))),
            (
                "presence_penalty",
                request.presence_penalty.map(|v| json!(v)),
            ),
            (
                "repetition_penalty",
                request.repetition_penalty.map(|v| json!(v)),
            ),
            ("seed", request.seed.map(|v| json!(v))),
            (
                "chat_template_kwargs",
                request.thinking.map(|v| json!({"enable_thinking": v})),
            ),
        ] {
            if let Some(value) = value {
                body[key] = value;
            }
        }
        body
    }

    fn full_request(style: SchemaStyle) -> ChatRequest {
        ChatRequest {
            messages: vec![
                Message::text(Role::System, "Be \"precise\".\n"),
                Message {
                    role: Role::User,
                    parts: vec![
                        Part::Text("Look: é ✓".into()),
                        Part::Image {
                            bytes: Arc::new((0..=255u8).collect()),
                            mime: "image/png".into(),
                        },
                        Part::LocalImage(PathBuf::from("/data/a b.jpg")),
                    ],
                },
                Message::text(Role::Assistant, "{}"),
            ],
            schema: Some((
                "instruction".into(),
                json!({"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}),
            )),
            schema_style: style,
            temperature: Some(0.7),
            top_p: Some(0.9),
            max_tokens: Some(512),
            presence_penalty: Some(0.1),
            repetition_penalty: Some(1.05),
            seed: Some(u64::MAX),
            thinking: Some(false),
        }
    }

    #[test]
    fn the_wire_body_is_the_json_the_value_form_was() {
        for style in [SchemaStyle::ResponseFormat, SchemaStyle::StructuredOutputs] {
            let request = full_request(style);
            let sent: Value = serde_json::from_slice(&request.body_bytes("m")).unwrap();
            assert_eq!(sent, body_by_value(&request, "m"), "{style:?}");
            assert_eq!(request.body("m"), sent);
        }
        // Nothing optional set: only model, messages and stream.
        let bare = ChatRequest {
            messages: vec![Message::text(Role::User, "hi")],
            ..ChatRequest::default()
        };
        let sent: Value = serde_json::from_slice(&bare.body_bytes("m")).unwrap();
        assert_eq!(sent, body_by_value(&bare, "m"));
        assert_eq!(
            sent,
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": false})
        );
    }
}
