// Deterministic pseudo-random numbers for the simulator: xoshiro256** seeded by splitmix64, with
// the distributions written out here. The standard library's distributions are
// implementation-defined (libstdc++ and libc++ draw differently), so with them a seed would not
// replay the same delivery history on another platform.
//
// Thread-safety: an Rng is a plain value; give each thread its own. Hash64 is a pure function.
#ifndef IDEM_SIM_PRNG_H_
#define IDEM_SIM_PRNG_H_

#include <cstdint>
#include <initializer_list>

namespace idem::sim {

// One splitmix64 step: advances `state` and returns a well-mixed 64-bit value.
inline uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// A stateless hash of up to four integers. Used for decisions that must not depend on the order
// of other draws: a delivery's fault stays the same when the shrinker removes other deliveries.
inline uint64_t Hash64(uint64_t a, uint64_t b = 0, uint64_t c = 0, uint64_t d = 0) {
  uint64_t state = a;
  uint64_t h = SplitMix64(state);
  for (uint64_t v : {b, c, d}) {
    state = h ^ v;
    h = SplitMix64(state);
  }
  return h;
}

// A uniform double in [0, 1) from the top 53 bits of `bits`.
inline double UnitOf(uint64_t bits) { return static_cast<double>(bits >> 11) * 0x1.0p-53; }

// xoshiro256** (Blackman and Vigna): small, fast, and the same sequence everywhere.
class Rng {
 public:
  explicit Rng(uint64_t seed) {
    uint64_t state = seed;
    for (uint64_t& word : s_) word = SplitMix64(state);
  }

  uint64_t Next() {
    const uint64_t result = Rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = Rotl(s_[3], 45);
    return result;
  }

  // Uniform in [0, n). REQUIRES: n > 0. Lemire's multiply-and-reject: unbiased, and the same
  // draws on every platform.
  uint64_t Below(uint64_t n) {
    unsigned __int128 m = static_cast<unsigned __int128>(Next()) * n;
    uint64_t low = static_cast<uint64_t>(m);
    if (low < n) {
      const uint64_t threshold = (0 - n) % n;
      while (low < threshold) {
        m = static_cast<unsigned __int128>(Next()) * n;
        low = static_cast<uint64_t>(m);
      }
    }
    return static_cast<uint64_t>(m >> 64);
  }

  // Uniform in [lo, hi]. REQUIRES: lo <= hi.
  int64_t Between(int64_t lo, int64_t hi) {
    const uint64_t span = static_cast<uint64_t>(hi) - static_cast<uint64_t>(lo);
    if (span == UINT64_MAX) return static_cast<int64_t>(Next());
    return static_cast<int64_t>(static_cast<uint64_t>(lo) + Below(span + 1));
  }

  // Uniform in [0, 1).
  double Unit() { return UnitOf(Next()); }

  // True with probability p (clamped to [0, 1]). The comparison is on integers: p * 2^53 is
  // exact in IEEE doubles, so the answer does not depend on the platform's rounding.
  bool Chance(double p) {
    if (!(p > 0)) return false;
    if (p >= 1) return true;
    return (Next() >> 11) < static_cast<uint64_t>(p * 0x1.0p53);
  }

 private:
  static uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

  uint64_t s_[4];
};

}  // namespace idem::sim

#endif  // IDEM_SIM_PRNG_H_
