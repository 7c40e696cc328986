//! A deterministic generator of hostile input for the parsers' tests: no dependency, and a
//! failure reproduces from the seed alone.

/// xorshift64* (Marsaglia, Vigna).
pub(crate) struct XorShift(u64);

impl XorShift {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `0..n` for fuzzing; `n` must be non-zero.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// Noise half the time; otherwise one of `seeds` with a few bytes replaced,
    /// inserted (from `alphabet` or anything), removed or cut off, which reaches much
    /// deeper into a parser than noise does.
    pub(crate) fn input(&mut self, seeds: &[&[u8]], alphabet: &[u8], max_len: usize) -> Vec<u8> {
        if seeds.is_empty() || self.below(2) == 0 {
            let len = self.below(max_len + 1);
            return (0..len).map(|_| self.next_u64() as u8).collect();
        }
        let mut out = self.pick(seeds).to_vec();
        for _ in 0..=self.below(4) {
            let byte = if self.below(4) == 0 {
                self.next_u64() as u8
            } else {
                self.pick(alphabet)
            };
            let at = self.below(out.len() + 1);
            match self.below(4) {
                0 if at < out.len() => out[at] = byte,
                1 => out.insert(at, byte),
                2 if at < out.len() => {
                    out.remove(at);
                }
                3 => out.truncate(at),
                _ => {}
            }
        }
        out
    }
}
