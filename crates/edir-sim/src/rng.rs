//! A small seeded PRNG (SplitMix64): deterministic worlds, faults and phrasings without a
//! dependency. Not for cryptography.

/// `SplitMix64`.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// A generator from several values (a seed and a request number, say).
    #[must_use]
    pub fn from_parts(parts: &[u64]) -> Self {
        let mut rng = Self::new(0);
        for part in parts {
            rng.0 ^= part.wrapping_mul(0xBF58_476D_1CE4_E5B9);
            rng.next_u64();
        }
        rng
    }

    /// A generator seeded by the bytes of `text`.
    #[must_use]
    pub fn from_text(text: &str) -> Self {
        let hash = blake3::hash(text.as_bytes());
        let bytes: [u8; 8] = hash.as_bytes()[..8].try_into().unwrap_or([0; 8]);
        Self::new(u64::from_le_bytes(bytes))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    #[expect(
        clippy::cast_precision_loss,
        reason = "53 random bits fit an f64 exactly"
    )]
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        let n64 = n.max(1) as u64;
        usize::try_from(self.next_u64() % n64).unwrap_or(0)
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// A random element.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}
