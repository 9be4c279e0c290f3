//! Model-call errors: every failure keeps the endpoint, the replica URL (without credentials),
//! the HTTP status and the server's own message, and says whether a retry can help.

use std::time::Duration;

/// What kind of failure, for retry decisions and for `status` / `retry --error CLASS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Could not connect (refused, DNS, reset before a reply).
    Connect,
    /// No reply within the request timeout.
    Timeout,
    /// The server answered with a non-2xx status.
    Status(u16),
    /// The reply body was cut short or could not be read.
    BodyCut,
    /// The reply was not the JSON shape the API promises.
    Decode,
    /// The model's output failed the schema after the whole repair ladder.
    InvalidOutput,
    /// The task's overall deadline passed.
    Deadline,
    /// Every replica's circuit breaker is open.
    NoReplica,
    /// A request we could not even build (a bad image, say).
    Request,
}

/// A failed model call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.describe())]
pub struct ModelError {
    /// What failed.
    pub kind: ErrorKind,
    /// The logical endpoint (`vlm`).
    pub endpoint: String,
    /// The replica, without credentials; empty when no replica was tried.
    pub url: String,
    /// The server's (or the transport's) message.
    pub message: String,
    /// `Retry-After`, when the server sent one.
    pub retry_after: Option<Duration>,
}

impl ModelError {
    /// A new error.
    pub fn new(kind: ErrorKind, endpoint: &str, url: &str, message: impl Into<String>) -> Self {
        Self {
            kind,
            endpoint: endpoint.to_string(),
            url: url.to_string(),
            message: message.into(),
            retry_after: None,
        }
    }

    fn describe(&self) -> String {
        let at = if self.url.is_empty() {
            String::new()
        } else {
            format!(" (`{}`)", self.url)
        };
        match self.kind {
            ErrorKind::Status(code) => format!(
                "endpoint `{}`{at} returned {code}: {}",
                self.endpoint, self.message
            ),
            ErrorKind::Connect => format!(
                "cannot reach endpoint `{}`{at}: {}",
                self.endpoint, self.message
            ),
            ErrorKind::Timeout => format!(
                "endpoint `{}`{at} timed out: {}",
                self.endpoint, self.message
            ),
            ErrorKind::BodyCut => format!(
                "reply from endpoint `{}`{at} was cut short: {}",
                self.endpoint, self.message
            ),
            ErrorKind::Decode => format!(
                "reply from endpoint `{}`{at} is not valid: {}",
                self.endpoint, self.message
            ),
            ErrorKind::InvalidOutput => format!(
                "output of endpoint `{}` failed its schema: {}",
                self.endpoint, self.message
            ),
            ErrorKind::Deadline => format!(
                "call to endpoint `{}` ran past its deadline: {}",
                self.endpoint, self.message
            ),
            ErrorKind::NoReplica => format!(
                "no replica of endpoint `{}` is available: {}",
                self.endpoint, self.message
            ),
            ErrorKind::Request => format!(
                "cannot build a request for endpoint `{}`: {}",
                self.endpoint, self.message
            ),
        }
    }

    /// Whether trying again (here or on another replica) can help: connect errors, timeouts,
    /// 408, 429, 500, 502, 503, 504, and bodies cut short. 400, 401, 403, 404, 413, 422 are
    /// final: the same request fails the same way.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self.kind {
            ErrorKind::Connect | ErrorKind::Timeout | ErrorKind::BodyCut | ErrorKind::NoReplica => {
                true
            }
            ErrorKind::Status(code) => matches!(code, 408 | 429 | 500 | 502 | 503 | 504),
            ErrorKind::Decode
            | ErrorKind::InvalidOutput
            | ErrorKind::Deadline
            | ErrorKind::Request => false,
        }
    }

    /// Whether the failure says the server is overloaded (the adaptive limit backs off).
    #[must_use]
    pub fn is_overload(&self) -> bool {
        matches!(self.kind, ErrorKind::Timeout | ErrorKind::Status(429 | 503))
    }

    /// Whether the replica itself looks broken (its circuit breaker counts it).
    #[must_use]
    pub fn is_replica_fault(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Connect
                | ErrorKind::Timeout
                | ErrorKind::BodyCut
                | ErrorKind::Status(500 | 502 | 503 | 504)
        )
    }

    /// The class recorded with a failed task: `connect`, `timeout`, `http_429`, `body_cut`,
    /// `decode`, `invalid_output`, `deadline`, `no_replica`, `request`.
    #[must_use]
    pub fn class(&self) -> String {
        match self.kind {
            ErrorKind::Connect => "connect".into(),
            ErrorKind::Timeout => "timeout".into(),
            ErrorKind::Status(code) => format!("http_{code}"),
            ErrorKind::BodyCut => "body_cut".into(),
            ErrorKind::Decode => "decode".into(),
            ErrorKind::InvalidOutput => "invalid_output".into(),
            ErrorKind::Deadline => "deadline".into(),
            ErrorKind::NoReplica => "no_replica".into(),
            ErrorKind::Request => "request".into(),
        }
    }
}

/// The server's message from an error body: vLLM's `{"error": {"message"}}` (whose integer
/// `code` trips async-openai), OpenAI's, `FastAPI`'s `{"detail"}`, or the raw text.
#[must_use]
pub fn server_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(message) = value.pointer("/error/message").and_then(|m| m.as_str()) {
            return message.to_string();
        }
        if let Some(detail) = value.get("detail") {
            return detail
                .as_str()
                .map_or_else(|| detail.to_string(), ToString::to_string);
        }
        if let Some(message) = value.get("message").and_then(|m| m.as_str()) {
            return message.to_string();
        }
    }
    let trimmed = text.trim();
    if trimmed.is_empty() {
        "(empty body)".to_string()
    } else {
        trimmed.chars().take(500).collect()
    }
}

/// Parses `Retry-After`: seconds, or an HTTP date.
#[must_use]
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    if let Ok(seconds) = value.parse::<f64>()
        && seconds.is_finite()
        && seconds >= 0.0
    {
        return Some(Duration::from_secs_f64(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_and_as_a_date() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        let later = std::time::SystemTime::now() + Duration::from_secs(30);
        let date = httpdate::fmt_http_date(later);
        let parsed = parse_retry_after(&date).unwrap();
        assert!(
            parsed <= Duration::from_secs(30) && parsed >= Duration::from_secs(28),
            "{parsed:?}"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn classes_and_retryability() {
        let e = |kind| ModelError::new(kind, "vlm", "http://h/v1", "m");
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(e(ErrorKind::Status(code)).is_retryable(), "{code}");
        }
        for code in [400, 401, 403, 404, 413, 422] {
            assert!(!e(ErrorKind::Status(code)).is_retryable(), "{code}");
        }
        assert!(e(ErrorKind::Connect).is_retryable());
        assert!(!e(ErrorKind::InvalidOutput).is_retryable());
        assert_eq!(e(ErrorKind::Status(429)).class(), "http_429");
        assert_eq!(
            e(ErrorKind::Status(503)).to_string(),
            "endpoint `vlm` (`http://h/v1`) returned 503: m"
        );
    }

    #[test]
    fn server_messages_of_every_shape() {
        assert_eq!(
            server_message(br#"{"error": {"message": "context too long", "code": 400}}"#),
            "context too long"
        );
        assert_eq!(
            server_message(br#"{"detail": "field `image` is required"}"#),
            "field `image` is required"
        );
        assert_eq!(server_message(b"Bad Gateway"), "Bad Gateway");
    }
}
