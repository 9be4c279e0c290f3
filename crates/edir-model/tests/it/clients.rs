//! Chat, edits and embeddings against the simulator; start-up checks.

use edir_model::{
    ChatRequest, EditRequest, EmbedInput, Endpoint, EndpointConfig, ErrorKind, Message, Part, Role,
    SchemaCheck, SchemaStyle,
};
use edir_sim::{SimConfig, SimServer};
use serde_json::json;
use std::sync::Arc;

pub(crate) async fn sim(config: SimConfig) -> SimServer {
    SimServer::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

pub(crate) fn config(name: &str, model: &str, urls: Vec<String>) -> EndpointConfig {
    let mut config = EndpointConfig::new(name, model, urls);
    config.initial_backoff = std::time::Duration::from_millis(5);
    config.max_backoff = std::time::Duration::from_millis(20);
    config.timeout = std::time::Duration::from_secs(5);
    config
}

pub(crate) fn scene() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::read(&edir_sim::write_scenes(dir.path(), 1, 3, &[96]).unwrap()[0]).unwrap()
}

pub(crate) fn instruct_schema() -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(format!(
            "{}/../../prompts/instruct.schema.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    )
    .unwrap()
}

pub(crate) fn instruct_request(image: Vec<u8>) -> ChatRequest {
    ChatRequest {
        messages: vec![
            Message::text(Role::System, "You write edits."),
            Message {
                role: Role::User,
                parts: vec![
                    Part::Text(
                        "Edit type: texture (attribute.texture)\nAlso write 3 extra changes".into(),
                    ),
                    Part::Image {
                        bytes: Arc::new(image),
                        mime: "image/png".into(),
                    },
                ],
            },
        ],
        schema: Some(("edit_instruction".into(), instruct_schema())),
        temperature: Some(0.7),
        seed: Some(1),
        ..ChatRequest::default()
    }
}

#[tokio::test]
async fn chat_with_an_image_and_a_schema() {
    let sim = sim(SimConfig::default_models()).await;
    for style in [SchemaStyle::ResponseFormat, SchemaStyle::StructuredOutputs] {
        let endpoint = Endpoint::connect(config(
            "vlm",
            "Qwen/Qwen2.5-VL-32B-Instruct",
            vec![sim.base_url()],
        ))
        .await
        .unwrap();
        let mut request = instruct_request(scene());
        request.schema_style = style;
        let check = SchemaCheck::new(&instruct_schema()).unwrap();
        let reply = endpoint.chat_json(&request, &check).await.unwrap();
        assert_eq!(reply.value["feasible"], true, "{}", reply.value);
        assert_eq!(reply.value["extra_changes"].as_array().unwrap().len(), 3);
        assert_eq!(reply.rung, edir_model::Rung::Strict);
        let stats = endpoint.snapshot();
        assert_eq!((stats.requests, stats.images_in), (1, 1));
        assert!(stats.prompt_tokens > 256);
    }
}

#[tokio::test]
async fn qwen3_thinking_returns_reasoning() {
    let sim = sim(SimConfig::default_models()).await;
    let endpoint = Endpoint::connect(config("llm", "Qwen/Qwen3-32B", vec![sim.base_url()]))
        .await
        .unwrap();
    let request = ChatRequest {
        messages: vec![Message::text(Role::User, "hello")],
        thinking: Some(true),
        ..ChatRequest::default()
    };
    let reply = endpoint.chat(&request).await.unwrap();
    assert!(reply.reasoning.is_some());
    let off = ChatRequest {
        thinking: Some(false),
        ..request
    };
    assert!(endpoint.chat(&off).await.unwrap().reasoning.is_none());
}

#[tokio::test]
async fn image_edit_and_embeddings() {
    let sim = sim(SimConfig::default_models()).await;
    let editor = Endpoint::connect(config(
        "editor",
        "Qwen/Qwen-Image-Edit",
        vec![sim.base_url()],
    ))
    .await
    .unwrap();
    let image = scene();
    let edited = editor
        .edit(&EditRequest {
            image: image.clone().into(),
            file_name: "ref.png".into(),
            mime: "image/png".into(),
            prompt: "Make it night.".into(),
            seed: Some(1),
            steps: Some(50),
            guidance: Some(4.0),
            ..EditRequest::default()
        })
        .await
        .unwrap();
    let (_, scene) = edir_sim::codec::decode(&edited.image).unwrap();
    assert_eq!(scene.unwrap().time, edir_sim::scene::TimeOfDay::Night);
    let embed = Endpoint::connect(config("embed", "sim/embed-compose", vec![sim.base_url()]))
        .await
        .unwrap();
    let vectors = embed
        .embed(&[
            EmbedInput::Text("a red ball".into()),
            EmbedInput::ImageText {
                image: Arc::new(image.clone()),
                mime: "image/png".into(),
                text: "make it snowy".into(),
            },
            EmbedInput::Text("a blue box".into()),
            EmbedInput::ImageText {
                image: Arc::new(image),
                mime: "image/png".into(),
                text: String::new(),
            },
        ])
        .await
        .unwrap();
    assert_eq!(vectors.len(), 4);
    for v in &vectors {
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
    }
    assert_ne!(
        vectors[1], vectors[3],
        "the text moves the composed embedding"
    );
    assert_eq!(
        embed.snapshot().requests,
        3,
        "texts batched in one request, images one each"
    );
}

#[tokio::test]
async fn start_up_fails_fast_naming_the_url() {
    let error = Endpoint::connect(config(
        "vlm",
        "Qwen/Qwen2.5-VL-32B-Instruct",
        vec!["http://127.0.0.1:9/v1".into()],
    ))
    .await
    .unwrap_err();
    assert_eq!(error.kind, ErrorKind::Connect);
    assert!(
        error
            .to_string()
            .starts_with("cannot reach endpoint `vlm` (`http://127.0.0.1:9/v1`)"),
        "{error}"
    );
    let sim = sim(SimConfig::default_models()).await;
    let error = Endpoint::connect(config("vlm", "Qwen/Qwen2-VL-7B", vec![sim.base_url()]))
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(message.contains("but not `Qwen/Qwen2-VL-7B`"), "{message}");
    assert!(
        message.contains("`Qwen/Qwen2.5-VL-32B-Instruct`"),
        "{message}"
    );
    let _ = json!({});
}
