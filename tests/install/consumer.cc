// Built against an installed idem: proves the exported targets and headers are complete.
#include <cstdio>

#include "idem/memory_store.h"
#include "idem/open_store.h"
#include "idem/processor.h"
#if CONSUMER_HAS_SQLITE
#include "idem/sqlite_store.h"
#endif
#if CONSUMER_HAS_REDIS
#include "idem/redis_store.h"
#endif

int main(int argc, char** argv) {
  auto store = idem::OpenStore(argc > 1 ? argv[1] : "memory:");
  if (!store.ok()) {
    std::fprintf(stderr, "%s\n", store.status().ToString().c_str());
    return 1;
  }
  auto processor = idem::Processor::Create(**store, "install/test");
  if (!processor.ok()) return 1;
  int runs = 0;
  for (int i = 0; i < 2; ++i) {
    auto result = processor->Process(idem::Message{.id = "m-1", .payload = "p"},
                                     [&](idem::HandlerContext&) { ++runs; });
    if (!result.ok()) return 1;
  }
#if CONSUMER_HAS_SQLITE
  std::printf("sqlite schema %d\n", idem::SqliteSchemaVersion());
#endif
#if CONSUMER_HAS_REDIS
  auto redis = idem::ParseRedisUri("redis://127.0.0.1:6379/2?prefix=app");
  if (!redis.ok() || redis->db != 2 || redis->key_prefix != "app") return 1;
  std::printf("redis options parsed\n");
#endif
  std::printf("runs=%d\n", runs);
  return runs == 1 ? 0 : 1;
}
