//! Many rows in one bound parameter: a JSON array of arrays, unpacked in SQL (`json_each` on
//! SQLite, `jsonb_array_elements` on Postgres), so a batch of any size is one statement whose
//! text never changes. The statement is prepared once per connection and cached, and binding
//! costs one parameter, where a multi-row `VALUES` list is parsed again for every batch and
//! binds a parameter per column per row.

use serde::Serialize;

use crate::url::Backend;

/// The row source `e` over the JSON array bound as `$param`: each row's `e.value ->> i` is the
/// text (SQLite: the value) of its `i`-th element, and `e.key` orders the rows as the array
/// does.
pub(crate) fn source(backend: Backend, param: u32) -> String {
    match backend {
        Backend::Sqlite => format!("json_each(${param}) AS e"),
        Backend::Postgres => format!(
            "jsonb_array_elements(CAST(${param} AS JSONB)) WITH ORDINALITY AS e(value, key)"
        ),
    }
}

/// The JSON array of `rows` (tuples serialise as arrays).
pub(crate) fn encode<T: Serialize>(rows: &[T]) -> String {
    // Tuples of strings and numbers cannot fail to serialise.
    serde_json::to_string(rows).unwrap_or_else(|_| "[]".to_string())
}
