//! Image edits: vLLM-Omni's multipart `/v1/images/edits` (also SGLang's and LightX2V's shape),
//! with `seed`, steps and guidance; the reply's `b64_json` image.

use base64::Engine as _;
use serde_json::Value;

use crate::endpoint::Endpoint;
use crate::error::{ErrorKind, ModelError};

/// An edit request.
#[derive(Debug, Clone, Default)]
pub struct EditRequest {
    /// The input image, encoded.
    pub image: bytes::Bytes,
    /// Its file name (servers look at the extension).
    pub file_name: String,
    /// Its MIME type.
    pub mime: String,
    /// The instruction.
    pub prompt: String,
    /// Seed.
    pub seed: Option<u64>,
    /// Diffusion steps (`num_inference_steps`).
    pub steps: Option<u32>,
    /// Guidance (`true_cfg_scale` for Qwen-Image-Edit, `guidance_scale` too).
    pub guidance: Option<f64>,
    /// Output size, `WxH`.
    pub size: Option<String>,
    /// Negative prompt.
    pub negative_prompt: Option<String>,
}

/// An edited image.
#[derive(Debug, Clone)]
pub struct EditReply {
    /// The image bytes.
    pub image: Vec<u8>,
    /// The replica that answered.
    pub replica: String,
    /// Latency of the successful attempt.
    pub latency: std::time::Duration,
    /// Attempts made.
    pub attempts: u32,
}

impl Endpoint {
    /// One image edit (with retries and failover).
    ///
    /// # Errors
    /// [`ModelError`]; [`ErrorKind::Decode`] when the reply holds no image.
    pub async fn edit(&self, request: &EditRequest) -> Result<EditReply, ModelError> {
        let model = self.config.model.clone();
        let raw = self
            .send(
                |http, base| {
                    let part = reqwest::multipart::Part::stream(request.image.clone())
                        .file_name(request.file_name.clone());
                    let part = part.mime_str(&request.mime).unwrap_or_else(|_| {
                        reqwest::multipart::Part::stream(request.image.clone())
                            .file_name(request.file_name.clone())
                    });
                    let mut form = reqwest::multipart::Form::new()
                        .part("image", part)
                        .text("prompt", request.prompt.clone())
                        .text("model", model.clone())
                        .text("response_format", "b64_json")
                        .text("output_format", "png")
                        .text("n", "1");
                    if let Some(seed) = request.seed {
                        form = form.text("seed", seed.to_string());
                    }
                    if let Some(steps) = request.steps {
                        form = form.text("num_inference_steps", steps.to_string());
                    }
                    if let Some(guidance) = request.guidance {
                        form = form
                            .text("true_cfg_scale", guidance.to_string())
                            .text("guidance_scale", guidance.to_string());
                    }
                    if let Some(size) = &request.size {
                        form = form.text("size", size.clone());
                    }
                    if let Some(negative) = &request.negative_prompt {
                        form = form.text("negative_prompt", negative.clone());
                    }
                    http.post(format!("{base}/images/edits")).multipart(form)
                },
                0,
            )
            .await?;
        let decode = |message: &str| {
            ModelError::new(ErrorKind::Decode, &self.config.name, &raw.replica, message)
        };
        let value: Value =
            serde_json::from_slice(&raw.body).map_err(|_| decode("the reply is not JSON"))?;
        let b64 = value
            .pointer("/data/0/b64_json")
            .and_then(Value::as_str)
            .ok_or_else(|| decode("the reply has no `data[0].b64_json` image"))?;
        let image = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| decode("the image is not valid base64"))?;
        self.stats.usage(0, 0, 1, 1);
        Ok(EditReply {
            image,
            replica: raw.replica,
            latency: raw.latency,
            attempts: raw.attempts,
        })
    }
}
