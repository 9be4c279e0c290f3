//! The server over HTTP: shapes, the simulated models end to end, faults and capacity.

use std::time::{Duration, Instant};

use base64::Engine as _;
use edir_sim::{Capacity, Faults, SimConfig, SimServer};
use serde_json::{Value, json};

const VLM: &str = "Qwen/Qwen2.5-VL-32B-Instruct";
const LLM: &str = "Qwen/Qwen3-32B";
const EDITOR: &str = "Qwen/Qwen-Image-Edit";

async fn start(config: SimConfig) -> SimServer {
    SimServer::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

fn scene_png(seed: u64) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let paths = edir_sim::write_scenes(dir.path(), 1, seed, &[128]).unwrap();
    std::fs::read(&paths[0]).unwrap()
}

fn data_url(png: &[u8]) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}

fn schema(name: &str) -> Value {
    let file = match name {
        "edit_instruction" => "instruct",
        "retrieval_query" => "query",
        "edit_verdict" => "judge_edit",
        _ => "judge_query",
    };
    let path = format!(
        "{}/../../prompts/{file}.schema.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&fs_err::read_to_string(path).unwrap()).unwrap()
}

async fn chat(
    client: &reqwest::Client,
    base: &str,
    model: &str,
    text: &str,
    images: &[&[u8]],
    schema_name: &str,
) -> reqwest::Response {
    let mut content = vec![json!({"type": "text", "text": text})];
    for image in images {
        content.push(json!({"type": "image_url", "image_url": {"url": data_url(image)}}));
    }
    let body = json!({
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "response_format": {"type": "json_schema", "json_schema": {"name": schema_name, "schema": schema(schema_name), "strict": true}},
        "temperature": 0.7,
        "seed": 7
    });
    client
        .post(format!("{base}/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn reply(response: reqwest::Response) -> Value {
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    serde_json::from_str(body["choices"][0]["message"]["content"].as_str().unwrap()).unwrap()
}

async fn edit(client: &reqwest::Client, base: &str, image: &[u8], prompt: &str) -> Vec<u8> {
    let form = reqwest::multipart::Form::new()
        .part(
            "image",
            reqwest::multipart::Part::bytes(image.to_vec())
                .file_name("ref.png")
                .mime_str("image/png")
                .unwrap(),
        )
        .text("prompt", prompt.to_string())
        .text("model", EDITOR)
        .text("seed", "3")
        .text("response_format", "b64_json")
        .text("num_inference_steps", "50");
    let response = client
        .post(format!("{base}/images/edits"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    base64::engine::general_purpose::STANDARD
        .decode(body["data"][0]["b64_json"].as_str().unwrap())
        .unwrap()
}

#[tokio::test]
async fn models_and_unknown_model() {
    let sim = start(SimConfig::default_models()).await;
    let client = reqwest::Client::new();
    let models: Value = client
        .get(format!("{}/models", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(names.contains(&VLM) && names.contains(&EDITOR) && names.contains(&"sim/embed-image"));
    let response = client
        .post(format!("{}/chat/completions", sim.base_url()))
        .json(&json!({"model": "gpt-9", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], 404);
    assert_eq!(error["error"]["type"], "NotFoundError");
    assert_eq!(
        error["error"]["message"],
        "The model `gpt-9` does not exist."
    );
    let health = client
        .get(format!("http://{}/health", sim.addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

/// The whole EDIR loop on one reference: instruct, edit, judge, query, judge.
#[tokio::test]
async fn simulated_models_agree_end_to_end() {
    let sim = start(SimConfig::default_models()).await;
    let base = sim.base_url();
    let client = reqwest::Client::new();
    let mut accepted = 0;
    for seed in 0..8 {
        let reference = scene_png(seed);
        let prompt = "Edit type: color (attribute.color)\n5. Also write 3 extra changes, each...";
        let instruction = reply(
            chat(
                &client,
                &base,
                VLM,
                prompt,
                &[&reference],
                "edit_instruction",
            )
            .await,
        )
        .await;
        assert_eq!(instruction["feasible"], true, "{instruction}");
        let edit_text = instruction["edit"].as_str().unwrap().to_string();
        assert_eq!(instruction["extra_changes"].as_array().unwrap().len(), 3);
        let target = edit(&client, &base, &reference, &edit_text).await;
        assert_ne!(target, reference);
        let judge = reply(
            chat(
                &client,
                &base,
                VLM,
                &format!("Instruction: {edit_text}\n"),
                &[&reference, &target],
                "edit_verdict",
            )
            .await,
        )
        .await;
        assert_eq!(judge["verdict"], "accept", "{judge}");
        // A wrong target (an extra change on top) is rejected.
        let extra = instruction["extra_changes"][0].as_str().unwrap();
        let negative = edit(
            &client,
            &base,
            &reference,
            &format!("{edit_text} Also: {extra}"),
        )
        .await;
        let wrong = reply(
            chat(
                &client,
                &base,
                VLM,
                &format!("Instruction: {edit_text}\n"),
                &[&reference, &negative],
                "edit_verdict",
            )
            .await,
        )
        .await;
        assert_eq!(wrong["verdict"], "reject", "{wrong}");
        let query = reply(
            chat(
                &client,
                &base,
                LLM,
                &format!("The change (an instruction given to an image editor): {edit_text}\n"),
                &[],
                "retrieval_query",
            )
            .await,
        )
        .await;
        let query_text = query["query"].as_str().unwrap();
        let verdict = reply(
            chat(
                &client,
                &base,
                VLM,
                &format!("Query: {query_text}\n"),
                &[&reference, &target, &negative],
                "query_verdict",
            )
            .await,
        )
        .await;
        if verdict["verdict"] == "accept" {
            accepted += 1;
        } else {
            assert!(
                query_text.contains("different"),
                "a good query was rejected: {query_text} / {verdict}"
            );
        }
    }
    assert!(accepted >= 6, "{accepted} of 8 queries accepted");
}

#[tokio::test]
async fn photos_without_a_scene_get_generic_edits() {
    let sim = start(SimConfig::default_models()).await;
    let client = reqwest::Client::new();
    // A grayscale JPEG and an RGBA PNG, as users' photos might be.
    let gray = image::GrayImage::from_fn(90, 60, |x, y| image::Luma([((x * 3 + y) % 256) as u8]));
    let mut jpeg = std::io::Cursor::new(Vec::new());
    gray.write_to(&mut jpeg, image::ImageFormat::Jpeg).unwrap();
    let rgba = image::RgbaImage::from_fn(50, 70, |x, y| {
        image::Rgba([x as u8 * 4, y as u8 * 3, 90, 128])
    });
    let mut png = std::io::Cursor::new(Vec::new());
    rgba.write_to(&mut png, image::ImageFormat::Png).unwrap();
    for photo in [jpeg.into_inner(), png.into_inner()] {
        let instruction = reply(
            chat(
                &client,
                &sim.base_url(),
                VLM,
                "Edit type: remove (object.remove)",
                &[&photo],
                "edit_instruction",
            )
            .await,
        )
        .await;
        let text = instruction["edit"].as_str().unwrap();
        assert!(text.starts_with("Apply a remove change to the "), "{text}");
        let edited = edit(&client, &sim.base_url(), &photo, text).await;
        let (before, _) = edir_sim::codec::decode(&photo).unwrap();
        let (after, scene) = edir_sim::codec::decode(&edited).unwrap();
        assert!(scene.is_none());
        assert_eq!((before.width, before.height), (after.width, after.height));
        assert_ne!(before.data, after.data, "the edit is visible");
    }
    // A corrupt image is a 400 with FastAPI's shape.
    let form = reqwest::multipart::Form::new()
        .part(
            "image",
            reqwest::multipart::Part::bytes(b"garbage".to_vec()).file_name("x.png"),
        )
        .text("prompt", "Make it night.")
        .text("model", EDITOR);
    let response = client
        .post(format!("{}/images/edits", sim.base_url()))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("cannot decode image"),
        "{body}"
    );
}

#[tokio::test]
async fn embeddings_in_both_forms_are_normalised() {
    let sim = start(SimConfig::default_models()).await;
    let client = reqwest::Client::new();
    let url = format!("{}/embeddings", sim.base_url());
    let plain: Value = client
        .post(&url)
        .json(&json!({"model": "sim/embed-image", "input": ["a red ball", "a blue box"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(plain["data"].as_array().unwrap().len(), 2);
    let v: Vec<f64> = plain["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(v.len(), 256);
    let norm: f64 = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    let reference = scene_png(5);
    let messages = json!([{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(&reference)}},
        {"type": "text", "text": "Given an image, find a similar everyday image with the described changes: make it snowy"}
    ]}]);
    let composed: Value = client.post(&url).json(&json!({"model": "sim/embed-compose", "messages": messages, "encoding_format": "base64"})).send().await.unwrap().json().await.unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(composed["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    assert_eq!(bytes.len(), 256 * 4);
    let again: Value = client.post(&url).json(&json!({"model": "sim/embed-compose", "messages": messages, "encoding_format": "base64"})).send().await.unwrap().json().await.unwrap();
    assert_eq!(composed["data"], again["data"], "deterministic");
}

fn faulty(faults: Faults) -> SimConfig {
    let mut config = SimConfig::default_models();
    for model in &mut config.models {
        model.faults = faults.clone();
    }
    config
}

async fn simple_chat(client: &reqwest::Client, base: &str) -> reqwest::Result<reqwest::Response> {
    client
        .post(format!("{base}/chat/completions"))
        .json(&json!({"model": LLM, "messages": [{"role": "user", "content": "The change (an instruction given to an image editor): Make it night."}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "retrieval_query", "schema": schema("retrieval_query")}}}))
        .send()
        .await
}

#[tokio::test]
async fn http_faults_carry_status_and_retry_after() {
    let client = reqwest::Client::new();
    for (faults, status, retry_after) in [
        (
            Faults {
                rate_limit: 1.0,
                retry_after_s: 7,
                ..Faults::default()
            },
            429,
            Some("7"),
        ),
        (
            Faults {
                server_error: 1.0,
                ..Faults::default()
            },
            500,
            None,
        ),
        (
            Faults {
                unavailable: 1.0,
                retry_after_s: 2,
                ..Faults::default()
            },
            503,
            Some("2"),
        ),
    ] {
        let sim = start(faulty(faults)).await;
        let response = simple_chat(&client, &sim.base_url()).await.unwrap();
        assert_eq!(response.status(), status);
        assert_eq!(
            response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap()),
            retry_after
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], status, "vLLM's integer code");
    }
}

#[tokio::test]
async fn hangs_and_cuts_break_the_client_not_the_server() {
    let sim = start(faulty(Faults {
        hang: 1.0,
        hang_s: 30,
        ..Faults::default()
    }))
    .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let error = simple_chat(&client, &sim.base_url()).await.unwrap_err();
    assert!(error.is_timeout(), "{error}");
    let sim = start(faulty(Faults {
        cut: 1.0,
        ..Faults::default()
    }))
    .await;
    let client = reqwest::Client::new();
    let outcome = match simple_chat(&client, &sim.base_url()).await {
        Ok(response) => response.bytes().await.map(|_| ()),
        Err(error) => Err(error),
    };
    assert!(outcome.is_err(), "a cut body is an error");
    // The server still answers.
    assert_eq!(
        client
            .get(format!("{}/models", sim.base_url()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn content_faults_break_the_reply_not_the_envelope() {
    let client = reqwest::Client::new();
    for (faults, check) in [
        (
            Faults {
                invalid_json: 1.0,
                ..Faults::default()
            },
            "invalid",
        ),
        (
            Faults {
                truncated_json: 1.0,
                ..Faults::default()
            },
            "truncated",
        ),
        (
            Faults {
                code_fence: 1.0,
                ..Faults::default()
            },
            "fence",
        ),
        (
            Faults {
                schema_violation: 1.0,
                ..Faults::default()
            },
            "schema",
        ),
    ] {
        let sim = start(faulty(faults)).await;
        let body: Value = simple_chat(&client, &sim.base_url())
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let content = body["choices"][0]["message"]["content"].as_str().unwrap();
        match check {
            "invalid" | "truncated" => {
                assert!(serde_json::from_str::<Value>(content).is_err(), "{content}")
            }
            "fence" => assert!(content.contains("```json\n{"), "{content}"),
            _ => assert_eq!(serde_json::from_str::<Value>(content).unwrap(), json!({})),
        }
    }
}

#[tokio::test]
async fn wrong_edits_are_caught_by_the_judge() {
    let sim = start(faulty(Faults {
        wrong_edit: 1.0,
        ..Faults::default()
    }))
    .await;
    let client = reqwest::Client::new();
    let reference = scene_png(11);
    let edit_text = "Make it night.";
    let target = edit(&client, &sim.base_url(), &reference, edit_text).await;
    let mut good = SimConfig::default_models();
    good.seed = 1;
    let judge_sim = start(good).await;
    let verdict = reply(
        chat(
            &client,
            &judge_sim.base_url(),
            VLM,
            &format!("Instruction: {edit_text}\n"),
            &[&reference, &target],
            "edit_verdict",
        )
        .await,
    )
    .await;
    assert_eq!(verdict["verdict"], "reject", "{verdict}");
}

#[tokio::test]
async fn capacity_bounds_throughput_and_metrics_show_the_queue() {
    let mut config = SimConfig::default_models();
    for model in &mut config.models {
        model.capacity = Capacity {
            slots: 2,
            queue: 100,
            base_ms: 100.0,
            per_token_ms: 0.0,
            per_megapixel_ms: 0.0,
        };
    }
    let sim = start(config).await;
    let client = reqwest::Client::new();
    let started = Instant::now();
    let requests: Vec<_> = (0..8)
        .map(|_| {
            let client = client.clone();
            let base = sim.base_url();
            tokio::spawn(async move { simple_chat(&client, &base).await.unwrap().status() })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let metrics = client
        .get(format!("http://{}/metrics", sim.addr()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let gauge = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{model_name=\"{LLM}\"}}")))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(gauge("vllm:num_requests_running"), 2.0, "{metrics}");
    assert_eq!(gauge("vllm:num_requests_waiting"), 6.0, "{metrics}");
    assert_eq!(gauge("vllm:kv_cache_usage_perc"), 1.0);
    for request in requests {
        assert_eq!(request.await.unwrap(), 200);
    }
    // 8 requests, 2 at a time, 100 ms each: at least 400 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(390),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_full_queue_is_refused_with_503() {
    let mut config = SimConfig::default_models();
    for model in &mut config.models {
        model.capacity = Capacity {
            slots: 1,
            queue: 1,
            base_ms: 300.0,
            per_token_ms: 0.0,
            per_megapixel_ms: 0.0,
        };
    }
    let sim = start(config).await;
    let client = reqwest::Client::new();
    let requests: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            let base = sim.base_url();
            tokio::spawn(
                async move { simple_chat(&client, &base).await.unwrap().status().as_u16() },
            )
        })
        .collect();
    let mut statuses = Vec::new();
    for request in requests {
        statuses.push(request.await.unwrap());
    }
    statuses.sort_unstable();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        2,
        "{statuses:?}"
    );
}

#[test]
fn the_shipped_gpu_config_parses() {
    let text = fs_err::read_to_string(format!(
        "{}/../../pipelines/sim-gpu.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let config = SimConfig::from_yaml(&text).unwrap();
    assert_eq!(config.models.len(), 6);
    let editor = config.models.iter().find(|m| m.name == EDITOR).unwrap();
    assert_eq!(editor.capacity.slots, 4);
    assert!(SimConfig::from_yaml("models: [{name: x, role: chatt}]").is_err());
}

#[tokio::test]
async fn infeasible_fault_says_why() {
    let sim = start(faulty(Faults {
        infeasible: 1.0,
        ..Faults::default()
    }))
    .await;
    let client = reqwest::Client::new();
    let reference = scene_png(2);
    let instruction = reply(
        chat(
            &client,
            &sim.base_url(),
            VLM,
            "Edit type: color (attribute.color)",
            &[&reference],
            "edit_instruction",
        )
        .await,
    )
    .await;
    assert_eq!(instruction["feasible"], false);
    assert_eq!(instruction["extra_changes"], json!([]));
    assert!(
        instruction["reason"]
            .as_str()
            .unwrap()
            .contains("does not allow")
    );
}

/// `--faults RATE` mixes every kind; about RATE of the requests are hit, seeded.
#[tokio::test]
async fn mixed_faults_hit_about_their_rate() {
    const REQUESTS: usize = 240;
    let mut config = SimConfig::default_models().with_faults(0.4);
    for model in &mut config.models {
        model.faults.hang_s = 1;
    }
    let sim = start(config).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let mut handles = Vec::new();
    for _ in 0..REQUESTS {
        let client = client.clone();
        let base = sim.base_url();
        handles.push(tokio::spawn(async move {
            match simple_chat(&client, &base).await {
                Ok(response) if response.status() == 200 => response.bytes().await.is_ok(),
                _ => false,
            }
        }));
    }
    let mut transport_ok = 0;
    for handle in handles {
        transport_ok += usize::from(handle.await.unwrap());
    }
    let metrics = reqwest::get(format!("http://{}/metrics", sim.addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let faulted: f64 = metrics
        .lines()
        .find(|l| {
            l.starts_with(&format!(
                "edir_sim_requests_total{{model_name=\"{LLM}\",outcome=\"faulted\"}}"
            ))
        })
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    let share = faulted / REQUESTS as f64;
    // Infeasible and wrong-edit faults do not apply to a query writer, so slightly under 0.4.
    assert!((0.2..0.5).contains(&share), "faulted share {share}");
    assert!(
        transport_ok < REQUESTS && transport_ok > REQUESTS / 2,
        "{transport_ok} clean transports"
    );
}
