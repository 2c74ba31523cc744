// A mutex that spins briefly before it sleeps.
//
// The in-memory store holds a shard's lock for a few hundred nanoseconds. A plain std::mutex
// (glibc) parks a waiter in the kernel at once, so two threads meeting on a shard pay two context
// switches for a wait far shorter than either; absl::Mutex spins, but Debian's build of it also
// runs deadlock-cycle bookkeeping on every acquisition. This tries the lock up to 100 times,
// with a CPU pause between tries (a few microseconds at most), then blocks. Meets the Lockable
// requirements (std::lock_guard works).
#ifndef IDEM_INTERNAL_ADAPTIVE_MUTEX_H_
#define IDEM_INTERNAL_ADAPTIVE_MUTEX_H_

#include <mutex>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace idem::internal {

class AdaptiveMutex {
 public:
  void lock() {
    for (int i = 0; i < kSpins; ++i) {
      if (mu_.try_lock()) return;
      Pause();
    }
    mu_.lock();
  }
  bool try_lock() { return mu_.try_lock(); }
  void unlock() { mu_.unlock(); }

 private:
  static constexpr int kSpins = 100;

  static void Pause() {
#if defined(__x86_64__) || defined(__i386__)
    _mm_pause();
#endif
  }

  std::mutex mu_;
};

}  // namespace idem::internal

#endif  // IDEM_INTERNAL_ADAPTIVE_MUTEX_H_
