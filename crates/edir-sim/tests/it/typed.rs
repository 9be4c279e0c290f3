//! async-openai's typed responses parse what the simulator sends.

use async_openai::types::chat::CreateChatCompletionResponse;
use async_openai::types::embeddings::CreateEmbeddingResponse;
use async_openai::types::images::ImagesResponse;
use base64::Engine as _;
use edir_sim::{SimConfig, SimServer};
use serde_json::json;

#[tokio::test]
async fn async_openai_types_parse_every_route() {
    let sim = SimServer::start(SimConfig::default_models(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = sim.base_url();
    let client = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let png = std::fs::read(&edir_sim::write_scenes(dir.path(), 1, 9, &[96]).unwrap()[0]).unwrap();
    let url = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&png)
    );

    let chat = client
        .post(format!("{base}/chat/completions"))
        .json(&json!({"model": "Qwen/Qwen2.5-VL-32B-Instruct", "messages": [
            {"role": "system", "content": "You write edits."},
            {"role": "user", "content": [{"type": "text", "text": "Edit type: time (global.time)"}, {"type": "image_url", "image_url": {"url": url}}]}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "edit_instruction", "schema": {"type": "object"}}}}))
        .send().await.unwrap().text().await.unwrap();
    let chat: CreateChatCompletionResponse = serde_json::from_str(&chat).unwrap();
    let content = chat.choices[0].message.content.clone().unwrap();
    assert!(content.contains("\"feasible\":true"), "{content}");
    assert!(chat.usage.unwrap().prompt_tokens > 256);

    let embeddings = client
        .post(format!("{base}/embeddings"))
        .json(&json!({"model": "sim/embed-compose", "input": ["a red ball"]}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let embeddings: CreateEmbeddingResponse = serde_json::from_str(&embeddings).unwrap();
    assert_eq!(embeddings.data[0].embedding.len(), 256);

    let form = reqwest::multipart::Form::new()
        .part(
            "image[]",
            reqwest::multipart::Part::bytes(png.clone()).file_name("a.png"),
        )
        .text("prompt", "Make it night.")
        .text("model", "Qwen/Qwen-Image-Edit")
        .text("size", "64x48")
        .text("output_format", "png");
    let images = client
        .post(format!("{base}/images/edits"))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let images: ImagesResponse = serde_json::from_str(&images).unwrap();
    let async_openai::types::images::Image::B64Json { b64_json, .. } = images.data[0].as_ref()
    else {
        panic!("expected b64_json")
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64_json.as_str())
        .unwrap();
    let (pixels, scene) = edir_sim::codec::decode(&bytes).unwrap();
    assert_eq!(
        (pixels.width, pixels.height),
        (64, 48),
        "`size` is honoured"
    );
    assert_eq!(scene.unwrap().time, edir_sim::scene::TimeOfDay::Night);
}
