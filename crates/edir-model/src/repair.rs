//! The structured-output repair ladder: strict parse and schema validation; then a lenient
//! repair (code fences, leading prose, trailing commas, missing closing brackets); then one
//! correction turn that shows the model its validation error; then a resample with a new seed;
//! then a final `invalid_output` failure. The rung that succeeded is recorded.

use serde_json::Value;

use crate::chat::{ChatReply, ChatRequest, Message, Role};
use crate::endpoint::Endpoint;
use crate::error::{ErrorKind, ModelError};

/// Which rung produced the accepted output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rung {
    /// The reply was valid as is.
    Strict,
    /// The reply was valid after a lenient repair.
    Lenient,
    /// The model fixed it when shown the error.
    Correction,
    /// A fresh sample with a new seed was valid.
    Resample,
}

/// A validated structured reply.
#[derive(Debug, Clone)]
pub struct StructuredReply {
    /// The JSON value (valid against the schema).
    pub value: Value,
    /// The rung that produced it.
    pub rung: Rung,
    /// The last chat reply (content, tokens, replica).
    pub reply: ChatReply,
    /// Tokens over all calls the ladder made.
    pub prompt_tokens: u64,
    /// Completion tokens over all calls.
    pub completion_tokens: u64,
}

/// Checks a value against a compiled schema; the error names the first problem and where.
#[derive(Debug)]
pub struct SchemaCheck {
    validator: jsonschema::Validator,
}

impl SchemaCheck {
    /// Compiles a schema.
    ///
    /// # Errors
    /// The schema's own error.
    pub fn new(schema: &Value) -> Result<Self, String> {
        jsonschema::validator_for(schema)
            .map(|validator| Self { validator })
            .map_err(|e| e.to_string())
    }

    /// `Ok` or the first violation, e.g. ``"edit" is a required property (at `/`)``.
    ///
    /// # Errors
    /// The first violation.
    pub fn check(&self, value: &Value) -> Result<(), String> {
        match self.validator.iter_errors(value).next() {
            None => Ok(()),
            Some(error) => {
                let at = error.instance_path().to_string();
                Err(format!(
                    "{error} (at `{}`)",
                    if at.is_empty() { "/" } else { &at }
                ))
            }
        }
    }
}

/// Strict: the content must be exactly one JSON value.
fn strict(content: &str) -> Result<Value, String> {
    serde_json::from_str(content.trim()).map_err(|e| format!("not valid JSON: {e}"))
}

/// Lenient repair of common model mistakes.
#[must_use]
pub fn lenient(content: &str) -> Option<Value> {
    let mut text = content.trim().to_string();
    // Code fences: keep what is between the first fence and the next.
    if let Some(start) = text.find("```") {
        let after = &text[start + 3..];
        let after = after.strip_prefix("json").unwrap_or(after);
        let end = after.find("```").unwrap_or(after.len());
        text = after[..end].trim().to_string();
    }
    // Leading or trailing prose: from the first `{` (or `[`) on.
    let start = text.find(['{', '['])?;
    text = text[start..].to_string();
    if let Some(end) = text.rfind(['}', ']']) {
        let candidate = &text[..=end];
        if let Ok(value) = serde_json::from_str(candidate) {
            return Some(value);
        }
        if let Ok(value) = serde_json::from_str(&close_brackets(&remove_trailing_commas(candidate)))
        {
            return Some(value);
        }
    }
    let repaired = close_brackets(&remove_trailing_commas(&text));
    serde_json::from_str(&repaired).ok()
}

fn remove_trailing_commas(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        if c == '"' {
            in_string = true;
        }
        if c == ',' {
            let next = chars[i + 1..].iter().find(|c| !c.is_whitespace());
            if matches!(next, Some('}' | ']') | None) {
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// Closes an unterminated string and any brackets left open (a reply cut short).
fn close_brackets(text: &str) -> String {
    let mut stack = Vec::new();
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' => stack.push('}'),
            '[' => stack.push(']'),
            '}' | ']' => {
                stack.pop();
            }
            _ => {}
        }
    }
    let mut out = text.trim_end().trim_end_matches(',').to_string();
    if in_string {
        out.push('"');
    }
    while let Some(close) = stack.pop() {
        out.push(close);
    }
    out
}

/// Parses and validates, strictly then leniently.
fn accept(content: &str, schema: &SchemaCheck) -> Result<(Value, bool), String> {
    match strict(content) {
        Ok(value) => schema.check(&value).map(|()| (value, true)),
        Err(strict_error) => match lenient(content) {
            Some(value) => schema.check(&value).map(|()| (value, false)),
            None => Err(strict_error),
        },
    }
}

impl Endpoint {
    /// A chat call whose reply must be JSON valid against `schema`, climbing the repair ladder.
    ///
    /// # Errors
    /// Transport errors as [`Endpoint::chat`]; [`ErrorKind::InvalidOutput`] with the last
    /// validation error when every rung fails.
    pub async fn chat_json(
        &self,
        request: &ChatRequest,
        schema: &SchemaCheck,
    ) -> Result<StructuredReply, ModelError> {
        let (mut prompt_tokens, mut completion_tokens) = (0, 0);
        // The first failure (its reply and error) shapes the correction turn.
        let mut first: Option<(String, String)> = None;
        let mut last = (String::new(), String::new()); // (error, replica)
        for rung in [Rung::Strict, Rung::Correction, Rung::Resample] {
            let mut attempt = request.clone();
            match (rung, &first) {
                (Rung::Correction, Some((content, error))) => {
                    // Show the model what was wrong.
                    attempt
                        .messages
                        .push(Message::text(Role::Assistant, content.clone()));
                    attempt.messages.push(Message::text(
                        Role::User,
                        format!("Your reply is not valid: {error}. Reply again with only the corrected JSON object, no other text."),
                    ));
                }
                // A fresh sample with another seed.
                (Rung::Resample, _) => {
                    attempt.seed = Some(request.seed.unwrap_or(0).wrapping_add(0x9E37_79B9));
                }
                _ => {}
            }
            let reply = self.chat(&attempt).await?;
            prompt_tokens += reply.prompt_tokens;
            completion_tokens += reply.completion_tokens;
            match accept(&reply.content, schema) {
                Ok((value, strict)) => {
                    let rung = if rung == Rung::Strict && !strict {
                        Rung::Lenient
                    } else {
                        rung
                    };
                    return Ok(StructuredReply {
                        value,
                        rung,
                        reply,
                        prompt_tokens,
                        completion_tokens,
                    });
                }
                Err(error) => {
                    if first.is_none() {
                        first = Some((reply.content.clone(), error.clone()));
                    }
                    last = (error, reply.replica);
                }
            }
        }
        let first_error = first.map(|(_, e)| e).unwrap_or_default();
        Err(ModelError::new(
            ErrorKind::InvalidOutput,
            &self.config.name,
            &last.1,
            format!(
                "after correction and resampling: {} (first error: {first_error})",
                last.0
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lenient_repairs_what_models_get_wrong() {
        assert_eq!(lenient("```json\n{\"a\": 1}\n```"), Some(json!({"a": 1})));
        assert_eq!(
            lenient("Sure! Here it is: {\"a\": [1, 2,],} Hope that helps."),
            Some(json!({"a": [1, 2]}))
        );
        assert_eq!(
            lenient("{\"a\": {\"b\": \"cut sho"),
            Some(json!({"a": {"b": "cut sho"}}))
        );
        assert_eq!(
            lenient("{\"text\": \"a, }\"}"),
            Some(json!({"text": "a, }"})),
            "commas in strings stay"
        );
        assert_eq!(lenient("no json here"), None);
    }

    #[test]
    fn schema_errors_say_where() {
        let check = SchemaCheck::new(
            &json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}),
        )
        .unwrap();
        assert!(check.check(&json!({"n": 3})).is_ok());
        let error = check.check(&json!({"n": "x"})).unwrap_err();
        assert!(error.contains("(at `/n`)"), "{error}");
    }
}
