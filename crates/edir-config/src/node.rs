//! A YAML document as a tree of nodes that keep their spans, and a serde `Deserializer` over it.
//!
//! Why not deserialize the typed structs straight from YAML: serde stops at the first error, and
//! `edir-synth check` must report every problem at once. So the file is parsed once into this
//! tree (only YAML syntax can fail here), then each section and each stage is deserialized from
//! its own subtree, collecting one error per section instead of one per file. Errors carry the
//! span of the key or value at fault. Anchors, aliases and `<<:` merges are resolved by the
//! parser before the tree is built.

use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::source::{SourceId, Span, Spanned, to_u32};

/// A YAML value with its span.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) kind: NodeKind,
    pub(crate) span: Span,
}

#[derive(Debug, Clone)]
pub(crate) enum NodeKind {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// The entries of a mapping, or `None`.
    pub(crate) fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.kind {
            NodeKind::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// The text of a string scalar (also numbers and booleans written as keys), or `None`.
    pub(crate) fn as_key(&self) -> Option<String> {
        match &self.kind {
            NodeKind::Str(s) => Some(s.clone()),
            NodeKind::Int(i) => Some(i.to_string()),
            NodeKind::UInt(u) => Some(u.to_string()),
            NodeKind::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// A short description of the node's type, for messages.
    pub(crate) fn kind_name(&self) -> &'static str {
        match self.kind {
            NodeKind::Null => "null",
            NodeKind::Bool(_) => "a boolean",
            NodeKind::Int(_) | NodeKind::UInt(_) => "an integer",
            NodeKind::Float(_) => "a number",
            NodeKind::Str(_) => "a string",
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a mapping",
        }
    }
}

/// A YAML syntax error.
#[derive(Debug)]
pub(crate) struct SyntaxError {
    pub(crate) message: String,
    pub(crate) span: Span,
}

/// Parses YAML text into a [`Node`] tree.
pub(crate) fn parse(text: &str, source: SourceId) -> Result<Node, SyntaxError> {
    if text.trim().is_empty() {
        return Ok(Node {
            kind: NodeKind::Null,
            span: Span {
                source,
                line: 1,
                column: 1,
                len: 1,
            },
        });
    }
    match serde_saphyr::from_str::<serde_saphyr::Spanned<RawNode>>(text) {
        Ok(raw) => Ok(convert(raw, source)),
        Err(error) => {
            let span = error
                .location()
                .map_or(Span::file(source), |loc| location_span(&loc, source));
            Err(SyntaxError {
                message: syntax_message(&error),
                span,
            })
        }
    }
}

/// The first line of saphyr's message, without its own location suffix.
fn syntax_message(error: &serde_saphyr::Error) -> String {
    let text = error.to_string();
    let first = text.lines().next().unwrap_or("invalid YAML").trim();
    let first = match first.find(" at line ") {
        Some(i) => &first[..i],
        None => first,
    };
    first.trim_end_matches('.').to_string()
}

fn location_span(loc: &serde_saphyr::Location, source: SourceId) -> Span {
    Span {
        source,
        line: u32::try_from(loc.line()).unwrap_or(u32::MAX),
        column: u32::try_from(loc.column()).unwrap_or(u32::MAX),
        len: u32::try_from(loc.span().len()).unwrap_or(1).max(1),
    }
}

fn convert(raw: serde_saphyr::Spanned<RawNode>, source: SourceId) -> Node {
    let mut span = location_span(&raw.referenced, source);
    let kind = match raw.value {
        RawNode::Null => NodeKind::Null,
        RawNode::Bool(b) => NodeKind::Bool(b),
        RawNode::Int(i) => NodeKind::Int(i),
        RawNode::UInt(u) => NodeKind::UInt(u),
        RawNode::Float(f) => NodeKind::Float(f),
        RawNode::Str(s) => {
            if span.len <= 1 {
                span.len = to_u32(s.chars().count()).max(1);
            }
            NodeKind::Str(s)
        }
        RawNode::Seq(items) => {
            span.len = 1;
            NodeKind::Seq(
                items
                    .into_iter()
                    .map(|item| convert(item, source))
                    .collect(),
            )
        }
        RawNode::Map(entries) => {
            span.len = 1;
            NodeKind::Map(
                entries
                    .into_iter()
                    .map(|(k, v)| (convert(k, source), convert(v, source)))
                    .collect(),
            )
        }
    };
    Node { kind, span }
}

/// What saphyr hands us: any YAML value, children wrapped in saphyr's `Spanned`.
enum RawNode {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<serde_saphyr::Spanned<RawNode>>),
    Map(
        Vec<(
            serde_saphyr::Spanned<RawNode>,
            serde_saphyr::Spanned<RawNode>,
        )>,
    ),
}

impl<'de> Deserialize<'de> for RawNode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RawVisitor;
        impl<'de> Visitor<'de> for RawVisitor {
            type Value = RawNode;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E>(self) -> Result<RawNode, E> {
                Ok(RawNode::Null)
            }
            fn visit_none<E>(self) -> Result<RawNode, E> {
                Ok(RawNode::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<RawNode, D::Error> {
                RawNode::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<RawNode, E> {
                Ok(RawNode::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<RawNode, E> {
                Ok(RawNode::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<RawNode, E> {
                Ok(RawNode::UInt(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<RawNode, E> {
                Ok(RawNode::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<RawNode, E> {
                Ok(RawNode::Str(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<RawNode, E> {
                Ok(RawNode::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawNode, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(RawNode::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawNode, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(RawNode::Map(entries))
            }
        }
        deserializer.deserialize_any(RawVisitor)
    }
}

/// An error from deserializing a typed value out of a [`Node`].
#[derive(Debug, Clone)]
pub(crate) struct NodeError {
    pub(crate) message: String,
    pub(crate) span: Option<Span>,
    pub(crate) help: Option<String>,
}

impl NodeError {
    fn at(mut self, span: Span) -> Self {
        if self.span.is_none() {
            self.span = Some(span);
        }
        self
    }
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for NodeError {}

impl de::Error for NodeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self {
            message: msg.to_string(),
            span: None,
            help: None,
        }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        let help = crate::suggest::did_you_mean(field, expected.iter().copied())
            .map(|s| format!("did you mean `{s}`?"))
            .or_else(|| {
                Some(format!(
                    "expected one of {}",
                    expected
                        .iter()
                        .map(|e| format!("`{e}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            });
        Self {
            message: format!("unknown key `{field}`"),
            span: None,
            help,
        }
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        let mut error = Self::unknown_field(variant, expected);
        error.message = format!("unknown value `{variant}`");
        error
    }

    fn missing_field(field: &'static str) -> Self {
        Self {
            message: format!("missing required key `{field}`"),
            span: None,
            help: None,
        }
    }

    fn invalid_type(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        Self {
            message: format!(
                "expected {}, found {}",
                plain_expected(&exp.to_string()),
                describe(&unexp)
            ),
            span: None,
            help: None,
        }
    }

    fn invalid_value(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        Self {
            message: format!(
                "invalid value {}, expected {}",
                describe(&unexp),
                plain_expected(&exp.to_string())
            ),
            span: None,
            help: None,
        }
    }
}

/// serde's names for expected types, in words a pipeline author uses.
fn plain_expected(expected: &str) -> String {
    match expected {
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" | "usize" | "isize" => {
            "an integer".to_string()
        }
        "f32" | "f64" => "a number".to_string(),
        "a sequence" => "a list".to_string(),
        "a borrowed string" => "a string".to_string(),
        other if other.starts_with("struct ") || other.starts_with("a map") => {
            "a mapping".to_string()
        }
        other => other.to_string(),
    }
}

fn describe(unexp: &de::Unexpected<'_>) -> String {
    match unexp {
        de::Unexpected::Str(s) => format!("the string `{s}`"),
        de::Unexpected::Signed(i) => format!("the integer `{i}`"),
        de::Unexpected::Unsigned(u) => format!("the integer `{u}`"),
        de::Unexpected::Float(x) => format!("the number `{x}`"),
        de::Unexpected::Bool(b) => format!("the boolean `{b}`"),
        de::Unexpected::Unit => "null".to_string(),
        de::Unexpected::Seq => "a list".to_string(),
        de::Unexpected::Map => "a mapping".to_string(),
        other => other.to_string(),
    }
}

/// Deserializes `T` from a node, attaching the span of the part at fault to the error.
pub(crate) fn from_node<'a, T: Deserialize<'a>>(node: &'a Node) -> Result<T, NodeError> {
    T::deserialize(node).map_err(|e| e.at(node.span))
}

/// serde struct name that asks the [`Node`] deserializer for a value together with its span.
const SPANNED: &str = "$edir_config::Spanned";
const SPANNED_FIELDS: &[&str] = &["span", "value"];

impl<'de> Deserializer<'de> for &'de Node {
    type Error = NodeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, NodeError> {
        let result = match &self.kind {
            NodeKind::Null => visitor.visit_unit(),
            NodeKind::Bool(b) => visitor.visit_bool(*b),
            NodeKind::Int(i) => visitor.visit_i64(*i),
            NodeKind::UInt(u) => visitor.visit_u64(*u),
            NodeKind::Float(f) => visitor.visit_f64(*f),
            NodeKind::Str(s) => visitor.visit_borrowed_str(s),
            NodeKind::Seq(items) => visitor.visit_seq(NodeSeq {
                items: items.iter(),
            }),
            NodeKind::Map(entries) => visitor.visit_map(NodeMap {
                entries: entries.iter(),
                value: None,
            }),
        };
        result.map_err(|e| e.at(self.span))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, NodeError> {
        match self.kind {
            NodeKind::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, NodeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, NodeError> {
        if name == SPANNED && fields == SPANNED_FIELDS {
            return visitor.visit_map(SpannedAccess {
                node: self,
                step: 0,
            });
        }
        self.deserialize_any(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, NodeError> {
        match &self.kind {
            NodeKind::Str(s) => visitor
                .visit_enum(s.as_str().into_deserializer())
                .map_err(|e: NodeError| e.at(self.span)),
            _ => Err(NodeError {
                message: format!("expected a string, found {}", self.kind_name()),
                span: Some(self.span),
                help: None,
            }),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier ignored_any
    }
}

struct NodeSeq<'a> {
    items: std::slice::Iter<'a, Node>,
}

impl<'de> SeqAccess<'de> for NodeSeq<'de> {
    type Error = NodeError;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, NodeError> {
        match self.items.next() {
            Some(item) => seed
                .deserialize(item)
                .map(Some)
                .map_err(|e| e.at(item.span)),
            None => Ok(None),
        }
    }
}

struct NodeMap<'a> {
    entries: std::slice::Iter<'a, (Node, Node)>,
    value: Option<&'a Node>,
}

impl<'de> MapAccess<'de> for NodeMap<'de> {
    type Error = NodeError;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, NodeError> {
        match self.entries.next() {
            Some((key, value)) => {
                self.value = Some(value);
                seed.deserialize(key).map(Some).map_err(|e| e.at(key.span))
            }
            None => Ok(None),
        }
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, NodeError> {
        let value = self
            .value
            .take()
            .ok_or_else(|| de::Error::custom("value without a key"))?;
        seed.deserialize(value).map_err(|e| e.at(value.span))
    }
}

/// Feeds `{span: [source, line, column, len], value: <node>}` to [`Spanned`]'s visitor.
struct SpannedAccess<'a> {
    node: &'a Node,
    step: u8,
}

impl<'de> MapAccess<'de> for SpannedAccess<'de> {
    type Error = NodeError;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, NodeError> {
        let key = match self.step {
            0 => "span",
            1 => "value",
            _ => return Ok(None),
        };
        seed.deserialize(key.into_deserializer()).map(Some)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, NodeError> {
        self.step += 1;
        if self.step == 1 {
            let s = self.node.span;
            let parts = [s.source.0, s.line, s.column, s.len];
            seed.deserialize(de::value::SeqDeserializer::<_, NodeError>::new(
                parts.into_iter(),
            ))
        } else {
            seed.deserialize(self.node)
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SpannedVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for SpannedVisitor<T> {
            type Value = Spanned<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Spanned<T>, A::Error> {
                let _: Option<de::IgnoredAny> = map.next_key()?;
                let [source, line, column, len]: [u32; 4] = map.next_value()?;
                let _: Option<de::IgnoredAny> = map.next_key()?;
                let value = map.next_value()?;
                Ok(Spanned::new(
                    value,
                    Span {
                        source: SourceId(source),
                        line,
                        column,
                        len,
                    },
                ))
            }
        }
        deserializer.deserialize_struct(
            SPANNED,
            SPANNED_FIELDS,
            SpannedVisitor(std::marker::PhantomData),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Endpoint {
        model: Spanned<String>,
        #[serde(default)]
        max_in_flight: Option<Spanned<u32>>,
    }

    #[test]
    fn spans_point_at_values() {
        let node = parse("vlm:\n  model: Qwen\n  max_in_flight: 64\n", SourceId(0)).unwrap();
        let (_, body) = &node.as_map().unwrap()[0];
        let endpoint: Endpoint = from_node(body).unwrap();
        assert_eq!(endpoint.model.value, "Qwen");
        assert_eq!(
            (endpoint.model.span.line, endpoint.model.span.column),
            (2, 10)
        );
        assert_eq!(endpoint.model.span.len, 4);
        let limit = endpoint.max_in_flight.unwrap();
        assert_eq!(
            (limit.value, limit.span.line, limit.span.column),
            (64, 3, 18)
        );
    }

    #[test]
    fn unknown_key_points_at_the_key_with_a_suggestion() {
        let node = parse("model: Qwen\nmax_inflight: 3\n", SourceId(0)).unwrap();
        let error = from_node::<Endpoint>(&node).unwrap_err();
        assert_eq!(error.message, "unknown key `max_inflight`");
        assert_eq!(error.help.as_deref(), Some("did you mean `max_in_flight`?"));
        let span = error.span.unwrap();
        assert_eq!((span.line, span.column), (2, 1));
    }

    #[test]
    fn wrong_type_points_at_the_value() {
        let node = parse("model: Qwen\nmax_in_flight: lots\n", SourceId(0)).unwrap();
        let error = from_node::<Endpoint>(&node).unwrap_err();
        assert_eq!(
            error.message,
            "expected an integer, found the string `lots`"
        );
        let span = error.span.unwrap();
        assert_eq!((span.line, span.column), (2, 16));
    }

    #[test]
    fn anchors_and_merges_are_resolved() {
        let text =
            "base: &b { model: Qwen, max_in_flight: 8 }\nother:\n  <<: *b\n  max_in_flight: 9\n";
        let node = parse(text, SourceId(0)).unwrap();
        let (_, other) = &node.as_map().unwrap()[1];
        let endpoint: Endpoint = from_node(other).unwrap();
        assert_eq!(endpoint.model.value, "Qwen");
        assert_eq!(endpoint.max_in_flight.unwrap().value, 9);
    }

    #[test]
    fn syntax_errors_have_a_location() {
        let error = parse("a: [1, 2\nb: 3\n", SourceId(0)).unwrap_err();
        assert!(error.span.line >= 1, "{error:?}");
        assert!(!error.message.is_empty());
    }
}
