#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod breaker;
mod chat;
mod edit;
mod embed;
mod endpoint;
mod error;
mod key;
mod limit;
mod rate;
mod repair;
mod stats;

pub use breaker::{Breaker, FAILURE_THRESHOLD, OPEN_FOR};
pub use chat::{ChatReply, ChatRequest, Message, Part, Role, SchemaStyle};
pub use edit::{EditReply, EditRequest};
pub use embed::EmbedInput;
pub use endpoint::{Endpoint, EndpointConfig, RawReply, Replica, parse_queue};
pub use error::{ErrorKind, ModelError, parse_retry_after, server_message};
pub use key::{ApiKey, safe_url};
pub use limit::{AdaptiveLimit, LimitPermit};
pub use rate::RateLimit;
pub use repair::{Rung, SchemaCheck, StructuredReply, lenient};
pub use stats::{Stats, StatsSnapshot};
