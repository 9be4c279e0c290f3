//! Connecting the pipeline's endpoints: URLs from the pipeline or their environment variable,
//! API keys from the environment only, limits and retries from the pipeline.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use edir_config::{Api, Pipeline};
use edir_model::{ApiKey, Endpoint, EndpointConfig};

use crate::error::EngineError;

/// The model-client configuration of each endpoint the pipeline uses for `api` (all used
/// endpoints when `None`); `lookup` reads environment variables.
#[must_use]
pub fn endpoint_configs(
    pipeline: &Pipeline,
    api: Option<Api>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Vec<EndpointConfig> {
    pipeline
        .endpoints
        .values()
        .filter(|e| e.api != Api::Unused && api.is_none_or(|a| a == e.api))
        .map(|e| {
            let mut config = EndpointConfig::new(&e.name, &e.model, e.effective_urls(lookup));
            config.api_key = e
                .api_key_env
                .as_deref()
                .and_then(|var| lookup(var).filter(|k| !k.is_empty()))
                .map(ApiKey::new);
            config.max_in_flight = e.max_in_flight as usize;
            config.min_in_flight = e.min_in_flight as usize;
            config.timeout = Duration::from_secs_f64(e.timeout_s);
            config.attempts = e.retry.attempts;
            config.initial_backoff = Duration::from_millis(e.retry.initial_backoff_ms);
            config.max_backoff = Duration::from_millis(e.retry.max_backoff_ms);
            config.deadline = Duration::from_secs_f64(e.retry.task_deadline_s);
            config.requests_per_minute = e.requests_per_minute;
            config.tokens_per_minute = e.tokens_per_minute;
            config
        })
        .collect()
}

/// Connects (and checks) every endpoint the pipeline's stages call.
///
/// # Errors
/// The first endpoint that cannot be reached or does not serve its model.
pub async fn connect(
    pipeline: &Pipeline,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<HashMap<String, Arc<Endpoint>>, EngineError> {
    let mut endpoints = HashMap::new();
    for api in [Api::Chat, Api::ImageEdit] {
        for config in endpoint_configs(pipeline, Some(api), lookup) {
            let name = config.name.clone();
            let endpoint = Endpoint::connect(config).await?;
            endpoints.insert(name, endpoint);
        }
    }
    Ok(endpoints)
}
