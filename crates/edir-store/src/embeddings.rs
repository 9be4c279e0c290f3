//! Cached embeddings: (model, instruction hash, input hash) -> vector, so scoring again is free.

use std::collections::HashMap;

use crate::StoreError;
use crate::error::query;
use crate::store::{Store, get};

impl Store {
    /// Stores vectors (an existing entry is kept: same key, same vector).
    ///
    /// # Errors
    /// [`StoreError::Query`] when a statement fails.
    pub async fn put_embeddings(
        &self,
        model: &str,
        instruction: &str,
        vectors: &[(String, Vec<f32>)],
    ) -> Result<(), StoreError> {
        const OP: &str = "store embeddings";
        let now = self.now();
        let mut tx = self.write(OP).await?;
        for (input, vector) in vectors {
            let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
            sqlx::query(
                "INSERT INTO embeddings (model, instruction, input_hash, dim, vector, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            )
            .bind(model)
            .bind(instruction)
            .bind(input)
            .bind(i64::try_from(vector.len()).unwrap_or(i64::MAX))
            .bind(bytes)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(query(OP))?;
        }
        tx.commit().await.map_err(query(OP))
    }

    /// The cached vectors among `inputs`.
    ///
    /// # Errors
    /// [`StoreError::Query`], or [`StoreError::Corrupt`] for a vector whose length disagrees
    /// with its dimension.
    pub async fn get_embeddings(
        &self,
        model: &str,
        instruction: &str,
        inputs: &[String],
    ) -> Result<HashMap<String, Vec<f32>>, StoreError> {
        const OP: &str = "read embeddings";
        let mut found = HashMap::new();
        for input in inputs {
            let row = sqlx::query(
                "SELECT dim, vector FROM embeddings WHERE model = $1 AND instruction = $2 AND input_hash = $3",
            )
            .bind(model)
            .bind(instruction)
            .bind(input)
            .fetch_optional(&self.pool)
            .await
            .map_err(query(OP))?;
            let Some(row) = row else { continue };
            let dim: i64 = get(&row, "dim", OP)?;
            let bytes: Vec<u8> = get(&row, "vector", OP)?;
            if usize::try_from(dim).ok().map(|d| d * 4) != Some(bytes.len()) {
                return Err(StoreError::Corrupt {
                    what: "embedding",
                    detail: format!("{input}: {} bytes for dimension {dim}", bytes.len()),
                });
            }
            let vector = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            found.insert(input.clone(), vector);
        }
        Ok(found)
    }
}
