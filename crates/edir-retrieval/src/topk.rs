//! Exact top-k by dot product over the whole corpus, blocked, with the selection fused into
//! the tile loop: the full query x corpus score matrix never exists; each thread holds one
//! `QUERY_BLOCK x CORPUS_BLOCK` tile and each query a k-sized list.
//!
//! Order (trec_eval's): score descending; equal scores by corpus id, in *descending*
//! lexicographic order (trec_eval sorts ties by docno with `strcmp(b, a)`). `tie_rank[i]` is
//! corpus item `i`'s position among the ids sorted ascending, so a larger rank wins a tie.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::matrix::Matrix;
use crate::tile;

/// Queries per block (per thread, per tile).
pub const QUERY_BLOCK: usize = 512;
/// Corpus items per tile.
pub const CORPUS_BLOCK: usize = 2048;
/// Scores checked against a query's floor at once (one AVX-512 register).
const LANES: usize = 16;

/// A ranked corpus item.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranked {
    /// Index into the corpus.
    pub index: u32,
    /// Its score.
    pub score: f32,
}

/// The search was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("search cancelled")]
pub struct Cancelled;

/// The k best so far for one query, best first.
#[derive(Debug, Clone)]
struct TopK {
    k: usize,
    items: Vec<(f32, u32, u32)>, // (score, tie rank, index)
}

impl TopK {
    fn new(k: usize) -> Self {
        Self {
            k,
            items: Vec::with_capacity(k + 1),
        }
    }

    /// The score below which nothing can enter.
    #[inline]
    fn floor(&self) -> f32 {
        if self.items.len() < self.k {
            f32::NEG_INFINITY
        } else {
            self.items[self.k - 1].0
        }
    }

    #[inline]
    #[expect(
        clippy::float_cmp,
        reason = "a tie is exact equality, as trec_eval sees it"
    )]
    fn beats(a: (f32, u32), b: (f32, u32)) -> bool {
        a.0 > b.0 || (a.0 == b.0 && a.1 > b.1)
    }

    #[inline]
    fn offer(&mut self, score: f32, rank: u32, index: u32) {
        if self.k == 0 {
            return;
        }
        if self.items.len() == self.k {
            let last = self.items[self.k - 1];
            if !Self::beats((score, rank), (last.0, last.1)) {
                return;
            }
            self.items.pop();
        }
        let position = self
            .items
            .partition_point(|&(s, r, _)| Self::beats((s, r), (score, rank)));
        self.items.insert(position, (score, rank, index));
    }

    fn into_ranked(self) -> Vec<Ranked> {
        self.items
            .into_iter()
            .map(|(score, _, index)| Ranked { index, score })
            .collect()
    }
}

/// Exact top-`k` of every query against the whole corpus, on `threads` threads.
/// `exclude[q]` (CIRR-style) removes one corpus item from query `q`'s ranking.
///
/// # Errors
/// [`Cancelled`] when `cancel` is set (checked per tile).
///
/// # Panics
/// When dimensions differ or `tie_rank` does not cover the corpus.
pub fn search(
    queries: &Matrix,
    corpus: &Matrix,
    tie_rank: &[u32],
    k: usize,
    exclude: Option<&[Option<u32>]>,
    threads: usize,
    cancel: &AtomicBool,
) -> Result<Vec<Vec<Ranked>>, Cancelled> {
    assert_eq!(
        queries.dim, corpus.dim,
        "query and corpus dimensions differ"
    );
    assert_eq!(tie_rank.len(), corpus.rows, "one tie rank per corpus item");
    let k = k.min(corpus.rows);
    let threads = threads
        .max(1)
        .min(queries.rows.div_ceil(QUERY_BLOCK).max(1));
    let per_thread = queries.rows.div_ceil(threads).max(1);
    let mut results: Vec<Vec<Ranked>> = Vec::with_capacity(queries.rows);
    let chunks: Vec<Result<Vec<Vec<Ranked>>, Cancelled>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let start = (t * per_thread).min(queries.rows);
                let end = ((t + 1) * per_thread).min(queries.rows);
                scope.spawn(move || {
                    search_range(queries, corpus, tie_rank, k, exclude, start, end, cancel)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(Cancelled)))
            .collect()
    });
    for chunk in chunks {
        results.extend(chunk?);
    }
    Ok(results)
}

#[expect(clippy::too_many_arguments, reason = "the inner loop's whole context")]
fn search_range(
    queries: &Matrix,
    corpus: &Matrix,
    tie_rank: &[u32],
    k: usize,
    exclude: Option<&[Option<u32>]>,
    start: usize,
    end: usize,
    cancel: &AtomicBool,
) -> Result<Vec<Vec<Ranked>>, Cancelled> {
    let mut out = Vec::with_capacity(end - start);
    let mut buffer = vec![0.0f32; QUERY_BLOCK * CORPUS_BLOCK];
    let mut q0 = start;
    while q0 < end {
        let qn = QUERY_BLOCK.min(end - q0);
        let mut tops: Vec<TopK> = (0..qn).map(|_| TopK::new(k)).collect();
        let mut c0 = 0;
        while c0 < corpus.rows {
            if cancel.load(Ordering::Relaxed) {
                return Err(Cancelled);
            }
            let cn = CORPUS_BLOCK.min(corpus.rows - c0);
            tile::scores(queries, q0, qn, corpus, c0, cn, &mut buffer);
            for (i, top) in tops.iter_mut().enumerate() {
                let row = &buffer[i * cn..(i + 1) * cn];
                let skip = exclude.and_then(|e| e[q0 + i]);
                let mut floor = top.floor();
                // Most scores fall below the floor: check a lane-wide chunk's maximum first
                // (it vectorises), and only look at the chunk's scores when one may enter.
                for (chunk_at, chunk) in row.chunks(LANES).enumerate() {
                    let most = chunk
                        .iter()
                        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
                    if most < floor {
                        continue;
                    }
                    for (offset, &score) in chunk.iter().enumerate() {
                        if score < floor {
                            continue;
                        }
                        let j = chunk_at * LANES + offset;
                        let index = u32::try_from(c0 + j).unwrap_or(u32::MAX);
                        if skip == Some(index) {
                            continue;
                        }
                        top.offer(score, tie_rank[c0 + j], index);
                        floor = top.floor();
                    }
                }
            }
            c0 += cn;
        }
        out.extend(tops.into_iter().map(TopK::into_ranked));
        q0 += qn;
    }
    Ok(out)
}

/// MMEB-style: rank only each query's own candidates (`pos` + `neg`), exactly.
#[must_use]
pub fn search_candidates(
    queries: &Matrix,
    corpus: &Matrix,
    tie_rank: &[u32],
    candidates: &[Vec<u32>],
    k: usize,
) -> Vec<Vec<Ranked>> {
    candidates
        .iter()
        .enumerate()
        .map(|(q, items)| {
            let mut top = TopK::new(k.min(items.len()));
            let row = queries.row(q);
            for &index in items {
                let score = row
                    .iter()
                    .zip(corpus.row(index as usize))
                    .map(|(a, b)| a * b)
                    .sum::<f32>();
                top.offer(score, tie_rank[index as usize], index);
            }
            top.into_ranked()
        })
        .collect()
}

/// The same blocked tile loop as [`search`] with the selection left out: the GEMM alone, on
/// the same tiles and threads. For benchmarks, to tell the selection's cost from the
/// multiplication's. Returns a checksum (so the work cannot be optimised away).
#[doc(hidden)]
#[must_use]
pub fn tiles_only(queries: &Matrix, corpus: &Matrix, threads: usize) -> f64 {
    let threads = threads
        .max(1)
        .min(queries.rows.div_ceil(QUERY_BLOCK).max(1));
    let per_thread = queries.rows.div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let start = (t * per_thread).min(queries.rows);
                let end = ((t + 1) * per_thread).min(queries.rows);
                scope.spawn(move || {
                    let mut buffer = vec![0.0f32; QUERY_BLOCK * CORPUS_BLOCK];
                    let mut sum = 0.0f64;
                    let mut q0 = start;
                    while q0 < end {
                        let qn = QUERY_BLOCK.min(end - q0);
                        let mut c0 = 0;
                        while c0 < corpus.rows {
                            let cn = CORPUS_BLOCK.min(corpus.rows - c0);
                            tile::scores(queries, q0, qn, corpus, c0, cn, &mut buffer);
                            sum += f64::from(buffer[0]);
                            c0 += cn;
                        }
                        q0 += qn;
                    }
                    sum
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
    })
}

/// `tie_rank` for corpus ids: each id's position in ascending lexicographic order.
#[must_use]
pub fn tie_ranks(ids: &[String]) -> Vec<u32> {
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by(|&a, &b| ids[a].as_bytes().cmp(ids[b].as_bytes()));
    let mut rank = vec![0u32; ids.len()];
    for (position, index) in order.into_iter().enumerate() {
        rank[index] = u32::try_from(position).unwrap_or(u32::MAX);
    }
    rank
}

#[cfg(test)]
#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    reason = "small test fixtures"
)]
mod tests {
    use super::*;

    /// A full sort, the oracle.
    fn oracle(q: &Matrix, c: &Matrix, rank: &[u32], k: usize) -> Vec<Vec<u32>> {
        (0..q.rows)
            .map(|i| {
                let mut all: Vec<(f32, u32, u32)> = (0..c.rows)
                    .map(|j| {
                        (
                            q.row(i).iter().zip(c.row(j)).map(|(a, b)| a * b).sum(),
                            rank[j],
                            j as u32,
                        )
                    })
                    .collect();
                all.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
                all.into_iter().take(k).map(|x| x.2).collect()
            })
            .collect()
    }

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    #[test]
    fn matches_a_full_sort_across_tiles_and_threads() {
        let mut seed = 7;
        let (nq, nc, d) = (600, 5000, 16);
        let q = Matrix::new(nq, d, (0..nq * d).map(|_| lcg(&mut seed)).collect());
        // Small integers make many exact ties.
        let c = Matrix::new(
            nc,
            d,
            (0..nc * d)
                .map(|_| (lcg(&mut seed) * 4.0).round())
                .collect(),
        );
        let ids: Vec<String> = (0..nc)
            .map(|i| format!("doc_{}", (i * 7919) % nc))
            .collect();
        let rank = tie_ranks(&ids);
        let expected = oracle(&q, &c, &rank, 10);
        for threads in [1, 2, 3] {
            let got = search(&q, &c, &rank, 10, None, threads, &AtomicBool::new(false)).unwrap();
            let got: Vec<Vec<u32>> = got
                .iter()
                .map(|r| r.iter().map(|x| x.index).collect())
                .collect();
            assert_eq!(got, expected, "{threads} threads");
        }
    }

    #[test]
    fn ties_go_to_the_larger_id_and_exclusion_works() {
        let q = Matrix::new(1, 2, vec![1.0, 0.0]);
        let c = Matrix::new(3, 2, vec![1.0, 0.0, 1.0, 0.0, 0.5, 0.0]);
        let ids = vec!["b".to_string(), "c".to_string(), "a".to_string()];
        let rank = tie_ranks(&ids);
        let got = search(&q, &c, &rank, 3, None, 1, &AtomicBool::new(false)).unwrap();
        assert_eq!(
            got[0].iter().map(|r| r.index).collect::<Vec<_>>(),
            [1, 0, 2],
            "`c` before `b` at equal score"
        );
        let got = search(
            &q,
            &c,
            &rank,
            3,
            Some(&[Some(1)]),
            1,
            &AtomicBool::new(false),
        )
        .unwrap();
        assert_eq!(got[0].iter().map(|r| r.index).collect::<Vec<_>>(), [0, 2]);
        let candidates = search_candidates(&q, &c, &rank, &[vec![2, 0]], 5);
        assert_eq!(
            candidates[0].iter().map(|r| r.index).collect::<Vec<_>>(),
            [0, 2]
        );
    }

    #[test]
    fn cancellation_stops_the_search() {
        let q = Matrix::new(4, 2, vec![0.0; 8]);
        let c = Matrix::new(4, 2, vec![0.0; 8]);
        assert_eq!(
            search(&q, &c, &[0, 1, 2, 3], 2, None, 1, &AtomicBool::new(true)),
            Err(Cancelled)
        );
    }
}
