//! The GPU path (cargo feature `cuda`): cuBLAS SGEMM for a block of queries against the whole
//! corpus, then a top-k kernel (compiled at run time with NVRTC) that selects each query's k
//! best in the same order as the CPU path: score descending, ties by corpus id descending
//! (`tie_rank`), the excluded reference skipped. CUDA is loaded at run time (cudarc's dynamic
//! loading): the feature builds without a CUDA toolkit, and [`Gpu::open`] returns `None` where
//! there is no driver, no cuBLAS or NVRTC, or no device, so the caller falls back to the CPU.
//!
//! Results equal the CPU path's up to float rounding: cuBLAS sums the dot products in another
//! order, so scores can differ in the last bits (|Δ| ≤ 1e-5 for unit vectors of dimension
//! 1,024), which can swap two candidates whose scores are that close.

#![allow(
    unsafe_code,
    reason = "CUDA is FFI: cuBLAS calls and kernel launches are unsafe; each block says why it holds"
)]

use std::sync::Arc;

use cudarc::cublas::{CudaBlas, Gemm as _, GemmConfig, sys::cublasOperation_t};
use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg as _};

use crate::matrix::Matrix;
use crate::topk::Ranked;

/// Threads per query in the selection kernel.
const THREADS: u32 = 256;
/// Largest k the kernel keeps per thread.
const MAX_K: usize = 128;
/// Scores held on the device at once (floats): bounds the query block.
const SCORE_BUDGET: usize = 128 << 20;

const KERNEL: &str = r#"
#define NONE 0xffffffffu
extern "C" __global__ void select_topk(
    const float* scores, const unsigned int* tie_rank, const unsigned int* exclude,
    unsigned int n, unsigned int k, float* out_score, unsigned int* out_index)
{
    const unsigned int q = blockIdx.x;
    const unsigned int t = threadIdx.x;
    const float* row = scores + (size_t)q * n;
    const unsigned int skip = exclude[q];
    float ls[128]; unsigned int lr[128]; unsigned int li[128];
    unsigned int count = 0;
    for (unsigned int j = t; j < n; j += blockDim.x) {
        if (j == skip) continue;
        const float s = row[j];
        const unsigned int r = tie_rank[j];
        if (count == k) {
            if (!(s > ls[k - 1] || (s == ls[k - 1] && r > lr[k - 1]))) continue;
            count--;
        }
        unsigned int p = count;
        while (p > 0 && (s > ls[p - 1] || (s == ls[p - 1] && r > lr[p - 1]))) {
            ls[p] = ls[p - 1]; lr[p] = lr[p - 1]; li[p] = li[p - 1]; p--;
        }
        ls[p] = s; lr[p] = r; li[p] = j; count++;
    }
    __shared__ float hs[256];
    __shared__ unsigned int hr[256];
    __shared__ unsigned int ho[256];
    unsigned int head = 0;
    for (unsigned int round = 0; round < k; round++) {
        if (head < count) { hs[t] = ls[head]; hr[t] = lr[head]; ho[t] = t; }
        else { hs[t] = 0.0f; hr[t] = 0; ho[t] = NONE; }
        __syncthreads();
        for (unsigned int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
            if (t < stride) {
                const unsigned int o2 = ho[t + stride];
                const float s2 = hs[t + stride];
                const unsigned int r2 = hr[t + stride];
                if (o2 != NONE && (ho[t] == NONE || s2 > hs[t] || (s2 == hs[t] && r2 > hr[t]))) {
                    hs[t] = s2; hr[t] = r2; ho[t] = o2;
                }
            }
            __syncthreads();
        }
        const unsigned int winner = ho[0];
        if (winner == NONE) {
            if (t == 0) { out_score[q * k + round] = 0.0f; out_index[q * k + round] = NONE; }
        } else if (t == winner) {
            out_score[q * k + round] = ls[head];
            out_index[q * k + round] = li[head];
            head++;
        }
        __syncthreads();
    }
}
"#;

/// The process's GPU scorer, opened on first use (the kernel compiles once).
///
/// # Errors
/// Why no GPU can be used here.
pub fn shared() -> Result<&'static std::sync::Mutex<Gpu>, &'static str> {
    static GPU: std::sync::OnceLock<Result<std::sync::Mutex<Gpu>, String>> =
        std::sync::OnceLock::new();
    GPU.get_or_init(|| Gpu::open().map(std::sync::Mutex::new))
        .as_ref()
        .map_err(String::as_str)
}

/// `what: the driver's error`.
fn err(what: &'static str) -> impl Fn(cudarc::driver::DriverError) -> String {
    move |e| format!("{what}: {e}")
}

/// A GPU ready to score.
pub struct Gpu {
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    select: CudaFunction,
    name: String,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Gpu {
    /// The first GPU.
    ///
    /// # Errors
    /// Why CUDA cannot be used here (no driver, library or device; the kernel did not build).
    pub fn open() -> Result<Self, String> {
        // cudarc panics on first use of a library it cannot load: look before leaping.
        // SAFETY: these only try to dlopen the libraries.
        let present = unsafe {
            cudarc::driver::sys::is_culib_present()
                && cudarc::cublas::sys::is_culib_present()
                && cudarc::nvrtc::sys::is_culib_present()
        };
        if !present {
            return Err("no CUDA driver, cuBLAS or NVRTC library found".to_string());
        }
        let context = CudaContext::new(0).map_err(|e| format!("no usable GPU: {e}"))?;
        let name = context.name().unwrap_or_else(|_| "GPU 0".to_string());
        let stream = context.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(|e| format!("cuBLAS: {e}"))?;
        let ptx = cudarc::nvrtc::compile_ptx(KERNEL).map_err(|e| format!("NVRTC: {e}"))?;
        let module = context
            .load_module(ptx)
            .map_err(|e| format!("loading the top-k kernel: {e}"))?;
        let select = module
            .load_function("select_topk")
            .map_err(|e| format!("loading the top-k kernel: {e}"))?;
        Ok(Self {
            stream,
            blas,
            select,
            name,
        })
    }

    /// The device's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Exact top-`k` of every query against the whole corpus (see the module docs).
    ///
    /// # Errors
    /// A CUDA failure, as text (the caller may fall back to the CPU).
    pub fn search(
        &self,
        queries: &Matrix,
        corpus: &Matrix,
        tie_rank: &[u32],
        k: usize,
        exclude: Option<&[Option<u32>]>,
    ) -> Result<Vec<Vec<Ranked>>, String> {
        let k = k.min(corpus.rows);
        if k > MAX_K {
            // The kernel keeps MAX_K per thread; the caller ranks on the CPU instead.
            return Err(format!(
                "top-{k} is more than the GPU kernel keeps ({MAX_K})"
            ));
        }
        if k == 0 || queries.rows == 0 {
            return Ok(vec![Vec::new(); queries.rows]);
        }
        let (n, dim) = (corpus.rows, corpus.dim);
        let int = |v: usize| i32::try_from(v).map_err(|_| format!("{v} is too large for cuBLAS"));
        let block = (SCORE_BUDGET / n).clamp(1, 4096).min(queries.rows);
        let stream = &self.stream;
        let d_corpus = stream
            .clone_htod(&corpus.data)
            .map_err(err("uploading the corpus"))?;
        let d_rank = stream
            .clone_htod(tie_rank)
            .map_err(err("uploading the tie ranks"))?;
        let mut d_queries = stream
            .alloc_zeros::<f32>(block * dim)
            .map_err(err("allocating queries"))?;
        let mut d_scores = stream
            .alloc_zeros::<f32>(block * n)
            .map_err(err("allocating scores"))?;
        let mut d_exclude = stream
            .alloc_zeros::<u32>(block)
            .map_err(err("allocating exclusions"))?;
        let mut d_out_score = stream
            .alloc_zeros::<f32>(block * k)
            .map_err(err("allocating results"))?;
        let mut d_out_index = stream
            .alloc_zeros::<u32>(block * k)
            .map_err(err("allocating results"))?;
        let mut out = Vec::with_capacity(queries.rows);
        let mut q0 = 0;
        while q0 < queries.rows {
            let qn = block.min(queries.rows - q0);
            stream
                .memcpy_htod(&queries.data[q0 * dim..(q0 + qn) * dim], &mut d_queries)
                .map_err(err("uploading queries"))?;
            let skips: Vec<u32> = (q0..q0 + qn)
                .map(|q| exclude.and_then(|e| e[q]).unwrap_or(u32::MAX))
                .collect();
            stream
                .memcpy_htod(&skips, &mut d_exclude)
                .map_err(err("uploading exclusions"))?;
            // Row-major scores (qn x n) are column-major (n x qn) = corpusᵀ·queries in
            // cuBLAS's terms: both row-major inputs read as column-major dim x rows.
            let config = GemmConfig {
                transa: cublasOperation_t::CUBLAS_OP_T,
                transb: cublasOperation_t::CUBLAS_OP_N,
                m: int(n)?,
                n: int(qn)?,
                k: int(dim)?,
                alpha: 1.0f32,
                lda: int(dim)?,
                ldb: int(dim)?,
                beta: 0.0f32,
                ldc: int(n)?,
            };
            // SAFETY: the buffers hold at least n x dim, qn x dim and qn x n floats.
            unsafe { self.blas.gemm(config, &d_corpus, &d_queries, &mut d_scores) }
                .map_err(|e| format!("cuBLAS SGEMM: {e}"))?;
            let (n32, k32) = (
                u32::try_from(n).map_err(|e| e.to_string())?,
                u32::try_from(k).map_err(|e| e.to_string())?,
            );
            let launch = LaunchConfig {
                grid_dim: (u32::try_from(qn).map_err(|e| e.to_string())?, 1, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut builder = stream.launch_builder(&self.select);
            builder
                .arg(&d_scores)
                .arg(&d_rank)
                .arg(&d_exclude)
                .arg(&n32)
                .arg(&k32)
                .arg(&mut d_out_score)
                .arg(&mut d_out_index);
            // SAFETY: the kernel's arguments match its signature and buffer sizes.
            unsafe { builder.launch(launch) }.map_err(err("the top-k kernel"))?;
            let scores = stream
                .clone_dtoh(&d_out_score)
                .map_err(err("downloading results"))?;
            let indices = stream
                .clone_dtoh(&d_out_index)
                .map_err(err("downloading results"))?;
            for q in 0..qn {
                out.push(
                    (0..k)
                        .map(|j| (indices[q * k + j], scores[q * k + j]))
                        .filter(|(index, _)| *index != u32::MAX)
                        .map(|(index, score)| Ranked { index, score })
                        .collect(),
                );
            }
            q0 += qn;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    /// On a machine with a GPU, the GPU path agrees with the CPU path (ties included); without
    /// one, opening it says why instead of panicking.
    #[test]
    fn agrees_with_the_cpu_or_says_why_it_cannot_run() {
        let gpu = match Gpu::open() {
            Ok(gpu) => gpu,
            Err(why) => {
                eprintln!("SKIPPED: GPU comparison: {why}");
                return;
            }
        };
        let (nq, nc, dim) = (300, 5_000, 64);
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            // Coarse values make exact ties common.
            f32::from(u8::try_from((seed >> 60) & 7).unwrap_or(0)) - 3.5
        };
        let queries = Matrix::new(nq, dim, (0..nq * dim).map(|_| next()).collect());
        let corpus = Matrix::new(nc, dim, (0..nc * dim).map(|_| next()).collect());
        let ids: Vec<String> = (0..nc).map(|i| format!("c{i}")).collect();
        let ranks = crate::topk::tie_ranks(&ids);
        let exclude: Vec<Option<u32>> = (0..nq).map(|q| (q % 3 == 0).then_some(7)).collect();
        let cpu = crate::topk::search(
            &queries,
            &corpus,
            &ranks,
            100,
            Some(&exclude),
            2,
            &AtomicBool::new(false),
        )
        .unwrap();
        let got = gpu
            .search(&queries, &corpus, &ranks, 100, Some(&exclude))
            .unwrap();
        // Small integers: the dot products are exact on both, so the lists are identical.
        assert_eq!(cpu, got, "on {}", gpu.name());
    }
}
