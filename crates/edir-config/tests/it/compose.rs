//! `docker-compose.yml` and `pipelines/full.yaml` must agree: every endpoint's model is served by
//! a compose service on the port its default URL names.

use crate::fixture::repo_root;

#[test]
fn compose_serves_every_endpoint_on_its_port() {
    let root = repo_root();
    let compiled = edir_config::compile_file(&root.join("pipelines/full.yaml"));
    let pipeline = compiled.pipeline.expect("full.yaml is valid");
    let text = fs_err::read_to_string(root.join("docker-compose.yml")).unwrap();
    let compose: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let services = compose["services"].as_object().unwrap();
    for endpoint in pipeline.endpoints.values() {
        assert_eq!(endpoint.urls.len(), 1, "{}", endpoint.name);
        let port: u16 = endpoint.urls[0]
            .rsplit(':')
            .next()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let serving: Vec<(&String, &serde_json::Value)> = services
            .iter()
            .filter(|(_, service)| {
                service["command"].as_array().is_some_and(|args| {
                    args.iter()
                        .filter_map(|a| a.as_str())
                        .any(|a| a == endpoint.model || a == format!("--model={}", endpoint.model))
                })
            })
            .collect();
        assert_eq!(
            serving.len(),
            1,
            "exactly one service serves `{}`",
            endpoint.model
        );
        let (name, service) = serving[0];
        let ports: Vec<&str> = service["ports"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p.as_str())
            .collect();
        assert!(
            ports.contains(&format!("{port}:{port}").as_str()),
            "service `{name}` publishes {ports:?}, endpoint `{}` uses {port}",
            endpoint.name
        );
        let args: Vec<&str> = service["command"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        assert!(
            args.contains(&format!("--port={port}").as_str()),
            "service `{name}` listens on {port}"
        );
        let image = service["image"].as_str().unwrap();
        assert!(
            image.contains(':') && !image.ends_with(":latest"),
            "service `{name}` pins its image: {image}"
        );
        assert!(
            service["healthcheck"].is_object(),
            "service `{name}` has a health check"
        );
    }
    assert!(services.contains_key("postgres"));
}
