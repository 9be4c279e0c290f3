//! Embeddings: plain `input` strings, and vLLM's `messages` form for an image with text.

use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::endpoint::Endpoint;
use crate::error::{ErrorKind, ModelError};

/// One thing to embed.
#[derive(Debug, Clone)]
pub enum EmbedInput {
    /// Text only.
    Text(String),
    /// An image and a text (a composed query, or a corpus image with its instruction).
    ImageText {
        /// Encoded image.
        image: Arc<Vec<u8>>,
        /// Its MIME type.
        mime: String,
        /// The text (may be empty).
        text: String,
    },
}

impl Endpoint {
    /// Embeds inputs, in order: texts in one batched request, image inputs one request each
    /// (vLLM's `messages` form takes one conversation), concurrently.
    ///
    /// # Errors
    /// The first failure; [`ErrorKind::Decode`] for a reply of the wrong shape or length.
    pub async fn embed(&self, inputs: &[EmbedInput]) -> Result<Vec<Vec<f32>>, ModelError> {
        let mut out: Vec<Option<Vec<f32>>> = vec![None; inputs.len()];
        let texts: Vec<(usize, &str)> = inputs
            .iter()
            .enumerate()
            .filter_map(|(i, x)| match x {
                EmbedInput::Text(t) => Some((i, t.as_str())),
                EmbedInput::ImageText { .. } => None,
            })
            .collect();
        if !texts.is_empty() {
            let body = json!({"model": self.config.model, "input": texts.iter().map(|(_, t)| *t).collect::<Vec<_>>(), "encoding_format": "float"});
            let vectors = self.embed_body(&body, texts.len()).await?;
            for ((i, _), v) in texts.iter().zip(vectors) {
                out[*i] = Some(v);
            }
        }
        let images = inputs.iter().enumerate().filter_map(|(i, x)| match x {
            EmbedInput::ImageText { image, mime, text } => Some((i, image, mime, text)),
            EmbedInput::Text(_) => None,
        });
        let calls = images.map(|(i, image, mime, text)| async move {
            let url = format!("data:{mime};base64,{}", base64::engine::general_purpose::STANDARD.encode(image.as_slice()));
            let mut content = vec![json!({"type": "image_url", "image_url": {"url": url}})];
            if !text.is_empty() {
                content.push(json!({"type": "text", "text": text}));
            }
            let body = json!({"model": self.config.model, "messages": [{"role": "user", "content": content}], "encoding_format": "float"});
            self.embed_body(&body, 1).await.map(|mut v| (i, v.remove(0)))
        });
        for result in futures_util::future::join_all(calls).await {
            let (i, v) = result?;
            out[i] = Some(v);
        }
        Ok(out.into_iter().map(Option::unwrap_or_default).collect())
    }

    async fn embed_body(&self, body: &Value, expected: usize) -> Result<Vec<Vec<f32>>, ModelError> {
        let bytes = bytes::Bytes::from(serde_json::to_vec(body).unwrap_or_default());
        let estimate = u64::try_from(bytes.len() / 4).unwrap_or(u64::MAX);
        let raw = self
            .send(
                |http, base| {
                    http.post(format!("{base}/embeddings"))
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(bytes.clone())
                },
                estimate,
            )
            .await?;
        let decode = |message: String| {
            ModelError::new(ErrorKind::Decode, &self.config.name, &raw.replica, message)
        };
        let value: Value =
            serde_json::from_slice(&raw.body).map_err(|e| decode(format!("not JSON: {e}")))?;
        let data = value
            .get("data")
            .and_then(Value::as_array)
            .ok_or_else(|| decode("no `data`".into()))?;
        if data.len() != expected {
            return Err(decode(format!(
                "{} embeddings for {expected} inputs",
                data.len()
            )));
        }
        let mut vectors = vec![Vec::new(); expected];
        for (position, item) in data.iter().enumerate() {
            let index = item
                .get("index")
                .and_then(Value::as_u64)
                .and_then(|i| usize::try_from(i).ok())
                .unwrap_or(position);
            let vector: Vec<f32> = match item.get("embedding") {
                #[expect(
                    clippy::cast_possible_truncation,
                    reason = "f64 from JSON to f32 embeddings"
                )]
                Some(Value::Array(xs)) => xs
                    .iter()
                    .map(|x| x.as_f64().unwrap_or(f64::NAN) as f32)
                    .collect(),
                Some(Value::String(b64)) => base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|_| decode("invalid base64 embedding".into()))?
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                _ => return Err(decode("an embedding is missing".into())),
            };
            *vectors
                .get_mut(index)
                .ok_or_else(|| decode(format!("embedding index {index} out of range")))? = vector;
        }
        let prompt_tokens = value
            .pointer("/usage/prompt_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        self.stats.usage(prompt_tokens, 0, 0, 0);
        Ok(vectors)
    }
}
