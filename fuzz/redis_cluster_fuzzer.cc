// Fuzzes cluster mode's parsers: the CLUSTER SLOTS reply (RESP bytes read by hiredis's reader, as
// from a socket), MOVED / ASK redirections, hash slots, and redis+cluster:// seed lists. None may
// crash, leak or hang; what they accept stays in range, and errors stay bounded.
//
// The first byte picks the parser; the rest is its input.
#include <hiredis/hiredis.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

#include "idem/redis_store.h"
#include "redis_cluster.h"

namespace {

using idem::internal::redis::KeySlot;
using idem::internal::redis::ParseClusterSlots;
using idem::internal::redis::ParseRedirect;
using idem::internal::redis::ParseSeedList;

void Slots(std::string_view resp) {
  redisReader* reader = redisReaderCreate();
  if (reader == nullptr) return;
  redisReaderFeed(reader, resp.data(), resp.size());
  void* reply = nullptr;
  if (redisReaderGetReply(reader, &reply) == REDIS_OK && reply != nullptr) {
    const auto ranges = ParseClusterSlots(static_cast<redisReply*>(reply), "10.0.0.1");
    if (ranges.ok()) {
      for (const auto& range : *ranges) {
        if (range.first < 0 || range.last < range.first || range.last >= 16384) std::abort();
        if (range.master.port < 1 || range.master.port > 65535) std::abort();
        if (range.master.host.empty() || range.master.host.size() > 255) std::abort();
      }
    }
    freeReplyObject(reply);
  }
  redisReaderFree(reader);
}

void Redirect(std::string_view text) {
  const auto redirect = ParseRedirect(text, "10.0.0.1");
  if (redirect.has_value()) {
    if (redirect->slot < 0 || redirect->slot >= 16384) std::abort();
    if (redirect->target.port < 1 || redirect->target.port > 65535) std::abort();
    if (redirect->target.host.empty()) std::abort();
  }
  const int slot = KeySlot(text);
  if (slot < 0 || slot >= 16384) std::abort();
}

void Seeds(std::string_view text) {
  const std::string uri = "redis+cluster://" + std::string(text);
  const auto options = idem::ParseRedisUri(uri);
  if (options.ok()) {
    if (options->cluster_seeds.empty() || options->cluster_seeds.size() > 64) std::abort();
    for (const auto& seed : options->cluster_seeds) {
      if (seed.host.empty() || seed.port < 1 || seed.port > 65535) std::abort();
    }
  } else if (options.status().message().size() > 512) {
    std::abort();
  }
  // The seed list alone, split as the URI grammar would leave it.
  const std::size_t colon = text.rfind(':');
  std::optional<int64_t> port;
  if (colon != std::string_view::npos && colon + 1 < text.size() && text.size() - colon <= 6 &&
      text.substr(colon + 1).find_first_not_of("0123456789") == std::string_view::npos) {
    port = std::atoll(std::string(text.substr(colon + 1)).c_str());
    if (*port < 1 || *port > 65535) port.reset();
  }
  const auto seeds = ParseSeedList(port ? text.substr(0, colon) : text, port);
  if (!seeds.ok() && seeds.status().message().size() > 512) std::abort();
  if (seeds.ok() && (seeds->empty() || seeds->size() > 64)) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 3) {
    case 0:
      Slots(input);
      break;
    case 1:
      Redirect(input);
      break;
    default:
      Seeds(input);
      break;
  }
  return 0;
}
