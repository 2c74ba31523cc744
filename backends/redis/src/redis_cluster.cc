#include "redis_cluster.h"

#include <hiredis/hiredis.h>

#include <algorithm>
#include <thread>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "internal/strings.h"
#include "internal/uri.h"
#include "redis_strings.h"

namespace idem::internal::redis {
namespace {

constexpr std::array<uint16_t, 256> kCrc16Table = [] {
  std::array<uint16_t, 256> table{};
  for (int i = 0; i < 256; ++i) {
    uint16_t crc = static_cast<uint16_t>(i << 8);
    for (int bit = 0; bit < 8; ++bit) {
      crc = (crc & 0x8000) != 0 ? static_cast<uint16_t>((crc << 1) ^ 0x1021)
                                : static_cast<uint16_t>(crc << 1);
    }
    table[i] = crc;
  }
  return table;
}();

std::string_view ReplyText(const redisReply* reply) {
  return std::string_view(reply->str, reply->len);
}

bool IsText(const redisReply* reply) {
  return reply->type == REDIS_REPLY_STRING || reply->type == REDIS_REPLY_STATUS;
}

// A host as a node names it: 1..255 bytes, no control characters or spaces.
bool PlausibleHost(std::string_view host) {
  if (host.empty() || host.size() > 255) return false;
  for (char c : host) {
    if (static_cast<unsigned char>(c) <= ' ' || c == 0x7f) return false;
  }
  return true;
}

std::optional<int> ParsePort(std::string_view text) {
  if (text.empty() || text.size() > 5) return std::nullopt;
  int port = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    port = port * 10 + (c - '0');
  }
  if (port < 1 || port > 65535) return std::nullopt;
  return port;
}

// The leading error code of a reply ("MOVED 1 h:p" -> "MOVED").
std::string_view ErrorCodeOf(std::string_view error) {
  return error.substr(0, std::min(error.find(' '), error.size()));
}

}  // namespace

uint16_t Crc16(std::string_view bytes) {
  uint16_t crc = 0;
  for (char c : bytes) {
    crc = static_cast<uint16_t>((crc << 8) ^
                                kCrc16Table[((crc >> 8) ^ static_cast<unsigned char>(c)) & 0xff]);
  }
  return crc;
}

int KeySlot(std::string_view key) {
  const std::size_t open = key.find('{');
  if (open != std::string_view::npos) {
    const std::size_t close = key.find('}', open + 1);
    if (close != std::string_view::npos && close > open + 1) {
      key = key.substr(open + 1, close - open - 1);
    }
  }
  return Crc16(key) & (kClusterSlots - 1);
}

void AppendClusterTag(std::string* out, std::string_view prefix, std::string_view scope,
                      std::string_view route) {
  uint64_t hash = 14695981039346656037ull;  // FNV-1a, 64 bits
  auto feed = [&hash](std::string_view bytes) {
    for (char c : bytes) {
      hash ^= static_cast<unsigned char>(c);
      hash *= 1099511628211ull;
    }
  };
  for (std::string_view part : {prefix, scope, route}) {
    feed(absl::StrCat(part.size(), ":"));
    feed(part);
  }
  static constexpr char kHex[] = "0123456789abcdef";
  char tag[kClusterTagSize];
  tag[0] = '{';
  for (int i = 0; i < 16; ++i) tag[1 + i] = kHex[(hash >> (60 - 4 * i)) & 0xf];
  tag[17] = '}';
  out->append(tag, sizeof(tag));
}

std::string NodeAddress::Endpoint() const {
  if (host.find(':') != std::string::npos) return Cat("[", host, "]:", port);
  return Cat(host, ":", port);
}

absl::StatusOr<std::vector<SlotRange>> ParseClusterSlots(const redisReply* reply,
                                                         std::string_view asked_host) {
  const absl::Status bad = absl::InternalError("redis cluster: unexpected CLUSTER SLOTS reply");
  if (reply == nullptr || reply->type != REDIS_REPLY_ARRAY || reply->elements > kClusterSlots) {
    return bad;
  }
  std::vector<SlotRange> ranges;
  ranges.reserve(reply->elements);
  for (std::size_t i = 0; i < reply->elements; ++i) {
    const redisReply* entry = reply->element[i];
    // start, end, master [host, port, id, ...], replicas...
    if (entry->type != REDIS_REPLY_ARRAY || entry->elements < 3) return bad;
    const redisReply* first = entry->element[0];
    const redisReply* last = entry->element[1];
    const redisReply* master = entry->element[2];
    if (first->type != REDIS_REPLY_INTEGER || last->type != REDIS_REPLY_INTEGER ||
        first->integer < 0 || last->integer < first->integer || last->integer >= kClusterSlots ||
        master->type != REDIS_REPLY_ARRAY || master->elements < 2 || !IsText(master->element[0]) ||
        master->element[1]->type != REDIS_REPLY_INTEGER || master->element[1]->integer < 1 ||
        master->element[1]->integer > 65535) {
      return bad;
    }
    std::string_view host = ReplyText(master->element[0]);
    if (host.empty() || host == "?") host = asked_host;
    if (!PlausibleHost(host)) return bad;
    ranges.push_back(SlotRange{.first = static_cast<int>(first->integer),
                               .last = static_cast<int>(last->integer),
                               .master = NodeAddress{.host = std::string(host),
                                                     .port = static_cast<int>(
                                                         master->element[1]->integer)}});
  }
  return ranges;
}

std::optional<Redirect> ParseRedirect(std::string_view error, std::string_view asked_host) {
  Redirect out;
  std::string_view rest;
  if (error.substr(0, 6) == "MOVED ") {
    rest = error.substr(6);
  } else if (error.substr(0, 4) == "ASK ") {
    out.ask = true;
    rest = error.substr(4);
  } else {
    return std::nullopt;
  }
  const std::size_t space = rest.find(' ');
  if (space == std::string_view::npos) return std::nullopt;
  const std::string_view slot = rest.substr(0, space);
  const std::string_view address = rest.substr(space + 1);
  if (slot.empty() || slot.size() > 5 ||
      slot.find_first_not_of("0123456789") != std::string_view::npos) {
    return std::nullopt;
  }
  int slot_number = 0;
  for (char c : slot) slot_number = slot_number * 10 + (c - '0');
  if (slot_number >= kClusterSlots) return std::nullopt;
  const std::size_t colon = address.rfind(':');
  if (colon == std::string_view::npos) return std::nullopt;
  std::string_view host = address.substr(0, colon);
  const std::optional<int> port = ParsePort(address.substr(colon + 1));
  if (!port.has_value()) return std::nullopt;
  if (host.empty()) host = asked_host;
  if (!PlausibleHost(host)) return std::nullopt;
  out.slot = slot_number;
  out.target = NodeAddress{.host = std::string(host), .port = *port};
  return out;
}

absl::StatusOr<std::vector<NodeAddress>> ParseSeedList(std::string_view host,
                                                       std::optional<int64_t> last_port) {
  auto error = [](std::string_view what) {
    return internal::UriError("redis+cluster", what);
  };
  std::vector<NodeAddress> seeds;
  if (host.find(',') == std::string_view::npos) {
    // One seed: the grammar has already split host and port (and removed an IPv6's brackets).
    if (host.empty()) return error("the seed host is missing");
    if (!PlausibleHost(host)) return error("a seed host has characters a host name cannot have");
    seeds.push_back(NodeAddress{.host = std::string(host),
                                .port = last_port ? static_cast<int>(*last_port) : 6379});
    return seeds;
  }
  std::size_t start = 0;
  while (true) {
    const std::size_t comma = host.find(',', start);
    const bool final_seed = comma == std::string_view::npos;
    const std::string_view item =
        final_seed ? host.substr(start) : host.substr(start, comma - start);
    if (seeds.size() == kMaxClusterSeeds) {
      return error(Cat("more than ", kMaxClusterSeeds, " seed nodes"));
    }
    NodeAddress seed;
    const std::size_t colon = item.find(':');
    if (colon != std::string_view::npos && item.find(':', colon + 1) != std::string_view::npos) {
      return error("an IPv6 seed must be the only one: redis+cluster://[::1]:7000");
    }
    seed.host = std::string(item.substr(0, colon));
    if (seed.host.empty()) return error("a seed host is empty: host:port,host:port");
    if (!PlausibleHost(seed.host)) {
      return error("a seed host has characters a host name cannot have");
    }
    if (colon != std::string_view::npos) {
      const std::optional<int> port = ParsePort(item.substr(colon + 1));
      if (!port.has_value()) return error("a seed port is not a number in 1..65535");
      seed.port = *port;
    } else if (final_seed && last_port) {
      seed.port = static_cast<int>(*last_port);
    } else {
      seed.port = 6379;
    }
    seeds.push_back(std::move(seed));
    if (final_seed) break;
    start = comma + 1;
  }
  return seeds;
}

ClusterRouter::ClusterRouter(Options options) : options_(std::move(options)) {}

ClusterRouter::Node* ClusterRouter::NodeAt(const NodeAddress& address) {
  std::lock_guard lock(nodes_mu_);
  for (const std::unique_ptr<Node>& node : nodes_) {
    if (node->address == address) return node.get();
  }
  ConnectParams params = options_.params;
  params.host = address.host;
  params.port = address.port;
  params.unix_socket.clear();
  params.db = 0;
  auto node = std::make_unique<Node>();
  node->address = address;
  node->pool = std::make_unique<Pool>(std::move(params), options_.pool_size, options_.backoff_min,
                                      options_.backoff_max);
  nodes_.push_back(std::move(node));
  return nodes_.back().get();
}

ClusterRouter::Node* ClusterRouter::NodeForSlot(int slot) {
  std::shared_lock lock(map_mu_);
  return slots_[slot];
}

absl::Status ClusterRouter::Refresh() {
  std::lock_guard refresh(refresh_mu_);
  // Known masters first (they answer with the freshest map), then the seeds.
  std::vector<NodeAddress> candidates = Masters();
  for (const NodeAddress& seed : options_.seeds) {
    if (std::find(candidates.begin(), candidates.end(), seed) == candidates.end()) {
      candidates.push_back(seed);
    }
  }
  absl::Status last = absl::UnavailableError("redis cluster: no seed node given");
  for (const NodeAddress& candidate : candidates) {
    Node* node = NodeAt(candidate);
    absl::StatusOr<Pool::Handle> connection = node->pool->Acquire();
    if (!connection.ok()) {
      last = connection.status();
      continue;
    }
    const std::string_view args[] = {"CLUSTER", "SLOTS"};
    absl::StatusOr<ReplyPtr> reply = (*connection)->Command(args, "CLUSTER SLOTS");
    if (!reply.ok()) {
      last = reply.status();
      continue;
    }
    if ((*reply)->type == REDIS_REPLY_ERROR) {
      last = ErrorReplyStatus(ReplyText(reply->get()),
                              Cat("CLUSTER SLOTS at ", candidate.Endpoint()));
      if (last.code() == absl::StatusCode::kUnauthenticated ||
          last.code() == absl::StatusCode::kPermissionDenied) {
        return last;
      }
      continue;
    }
    absl::StatusOr<std::vector<SlotRange>> ranges =
        ParseClusterSlots(reply->get(), candidate.host);
    if (!ranges.ok()) {
      last = ranges.status();
      continue;
    }
    if (ranges->empty()) {
      last = absl::UnavailableError(
          Cat("redis cluster: ", candidate.Endpoint(), " serves no slots (CLUSTER SLOTS empty)"));
      continue;
    }
    std::array<Node*, kClusterSlots> map{};
    for (const SlotRange& range : *ranges) {
      Node* master = NodeAt(range.master);
      for (int slot = range.first; slot <= range.last; ++slot) map[slot] = master;
    }
    {
      std::unique_lock lock(map_mu_);
      slots_ = map;
    }
    refreshes_.fetch_add(1, std::memory_order_relaxed);
    return absl::OkStatus();
  }
  return last;
}

std::vector<NodeAddress> ClusterRouter::Masters() {
  std::vector<NodeAddress> out;
  {
    std::shared_lock lock(map_mu_);
    const Node* previous = nullptr;
    for (const Node* node : slots_) {
      if (node == nullptr || node == previous) continue;
      previous = node;
      if (std::find(out.begin(), out.end(), node->address) == out.end()) {
        out.push_back(node->address);
      }
    }
  }
  std::sort(out.begin(), out.end(), [](const NodeAddress& a, const NodeAddress& b) {
    return a.host != b.host ? a.host < b.host : a.port < b.port;
  });
  return out;
}

absl::StatusOr<Pool::Handle> ClusterRouter::AcquireAt(const NodeAddress& node) {
  return NodeAt(node)->pool->Acquire();
}

absl::StatusOr<Pool::Handle> ClusterRouter::AcquireForSlot(int slot) {
  Node* node = NodeForSlot(slot);
  if (node == nullptr) {
    (void)Refresh();
    node = NodeForSlot(slot);
    if (node == nullptr) {
      return absl::UnavailableError(Cat("redis cluster: no master serves slot ", slot));
    }
  }
  return node->pool->Acquire();
}

ConnectParams ClusterRouter::ParamsForSlot(int slot) {
  Node* node = NodeForSlot(slot);
  if (node == nullptr) {
    (void)Refresh();
    node = NodeForSlot(slot);
  }
  if (node == nullptr) return options_.params;
  return node->pool->params();
}

ClusterCounts ClusterRouter::Counts() const {
  return ClusterCounts{.moved = moved_.load(std::memory_order_relaxed),
                       .ask = ask_.load(std::memory_order_relaxed),
                       .tryagain = tryagain_.load(std::memory_order_relaxed),
                       .clusterdown = clusterdown_.load(std::memory_order_relaxed),
                       .unreachable = unreachable_.load(std::memory_order_relaxed),
                       .refreshes = refreshes_.load(std::memory_order_relaxed)};
}

ClusterRouter::Result ClusterRouter::Run(std::span<const Request> requests, const BuildFn& build,
                                         bool read_time, std::string_view what) {
  const std::size_t n = requests.size();
  Result out;
  out.replies.resize(n);
  out.failures.resize(n);
  out.server_ms.assign(n, 0);

  struct State {
    int redirects = 0;
    int retries = 0;
    bool eval = false;
    Node* ask = nullptr;  // the node of an ASK redirection, for the next send only
  };
  std::vector<State> states(n);
  std::vector<std::size_t> pending(n);
  for (std::size_t i = 0; i < n; ++i) pending[i] = i;
  std::vector<std::string_view> argv;
  int pause_round = 0;

  while (!pending.empty()) {
    // Group the pending commands by the node they go to.
    struct Group {
      Node* node = nullptr;
      std::vector<std::size_t> commands;
      std::optional<Pool::Handle> connection;
    };
    std::vector<Group> groups;
    std::vector<std::size_t> unrouted;
    {
      std::shared_lock lock(map_mu_);
      for (std::size_t i : pending) {
        Node* node = states[i].ask != nullptr ? states[i].ask : slots_[requests[i].slot];
        if (node == nullptr) {
          unrouted.push_back(i);
          continue;
        }
        auto group = std::find_if(groups.begin(), groups.end(),
                                  [node](const Group& g) { return g.node == node; });
        if (group == groups.end()) {
          groups.push_back(Group{.node = node});
          group = groups.end() - 1;
        }
        group->commands.push_back(i);
      }
    }

    std::vector<std::size_t> again;
    bool refresh = false;
    bool pause = false;
    // Not sent: retried (with the map read again) until max_retries, then the status.
    auto not_sent = [&](std::size_t i, const absl::Status& status) {
      unreachable_.fetch_add(1, std::memory_order_relaxed);
      if (++states[i].retries > options_.max_retries) {
        out.failures[i] = status;
        return;
      }
      states[i].ask = nullptr;
      again.push_back(i);
      refresh = true;
      pause = true;
    };
    for (std::size_t i : unrouted) {
      not_sent(i, absl::UnavailableError(
                      Cat("redis cluster ", what, ": no master serves slot ", requests[i].slot)));
    }

    // Write every group before reading any reply: the nodes work in parallel.
    for (Group& group : groups) {
      absl::StatusOr<Pool::Handle> connection = group.node->pool->Acquire();
      absl::Status status = connection.status();
      if (status.ok()) {
        if (read_time) {
          const std::string_view time[] = {"TIME"};
          status = (*connection)->Append(time, what);
        }
        for (std::size_t k = 0; k < group.commands.size() && status.ok(); ++k) {
          const std::size_t i = group.commands[k];
          if (states[i].ask != nullptr) {
            const std::string_view asking[] = {"ASKING"};
            status = (*connection)->Append(asking, what);
            if (!status.ok()) break;
          }
          build(i, states[i].eval, &argv);
          status = (*connection)->Append(argv, what);
        }
      }
      if (status.ok()) {
        status = (*connection)->Flush(what);
        if (!status.ok()) {
          // Part of the pipeline may have reached the node: the commands may have run.
          for (std::size_t i : group.commands) out.failures[i] = status;
          refresh = true;
          continue;
        }
        group.connection.emplace(*std::move(connection));
        continue;
      }
      // Nothing was written (Append only buffers): as unreachable.
      if (connection.ok()) (*connection)->MarkBroken();
      for (std::size_t i : group.commands) not_sent(i, status);
    }

    for (Group& group : groups) {
      if (!group.connection.has_value()) continue;
      Connection& connection = **group.connection;
      int64_t node_ms = 0;
      absl::Status broken;
      if (read_time) {
        absl::StatusOr<ReplyPtr> time = connection.GetReply(what);
        int64_t seconds = 0;
        int64_t micros = 0;
        if (!time.ok()) {
          broken = time.status();
        } else if ((*time)->type != REDIS_REPLY_ARRAY || (*time)->elements != 2 ||
                   !IsText((*time)->element[0]) || !IsText((*time)->element[1]) ||
                   !absl::SimpleAtoi(ToAbsl(ReplyText((*time)->element[0])), &seconds) ||
                   !absl::SimpleAtoi(ToAbsl(ReplyText((*time)->element[1])), &micros)) {
          connection.MarkBroken();
          broken = absl::InternalError(Cat("redis cluster ", what, ": unexpected TIME reply"));
        }
        node_ms = seconds * 1000 + micros / 1000;
      }
      for (std::size_t i : group.commands) {
        if (!broken.ok()) {
          out.failures[i] = broken;
          continue;
        }
        State& state = states[i];
        const bool asked = state.ask != nullptr;
        state.ask = nullptr;
        if (asked) {
          absl::StatusOr<ReplyPtr> ok = connection.GetReply(what);
          if (!ok.ok()) {
            broken = ok.status();
            out.failures[i] = broken;
            refresh = true;
            continue;
          }
        }
        absl::StatusOr<ReplyPtr> reply = connection.GetReply(what);
        if (!reply.ok()) {
          // The connection broke after the command was sent: it may have run. Not retried.
          broken = reply.status();
          out.failures[i] = broken;
          refresh = true;
          continue;
        }
        const redisReply* r = reply->get();
        if (r->type == REDIS_REPLY_ERROR) {
          const std::string_view error = ReplyText(r);
          const std::string_view code = ErrorCodeOf(error);
          if (code == "MOVED" || code == "ASK") {
            const std::optional<Redirect> redirect = ParseRedirect(error, group.node->address.host);
            if (!redirect.has_value()) {
              out.failures[i] = absl::InternalError(
                  Cat("redis cluster ", what, ": malformed ", code, " redirection"));
              continue;
            }
            (redirect->ask ? ask_ : moved_).fetch_add(1, std::memory_order_relaxed);
            if (++state.redirects > options_.max_redirects) {
              out.failures[i] = absl::UnavailableError(
                  Cat("redis cluster ", what, ": more than ", options_.max_redirects,
                      " redirections (the cluster is resharding)"));
              continue;
            }
            Node* target = NodeAt(redirect->target);
            if (redirect->ask) {
              state.ask = target;
            } else {
              std::unique_lock lock(map_mu_);
              slots_[redirect->slot] = target;
              refresh = true;
            }
            again.push_back(i);
            continue;
          }
          if (code == "TRYAGAIN" || code == "CLUSTERDOWN") {
            (code == "TRYAGAIN" ? tryagain_ : clusterdown_).fetch_add(1, std::memory_order_relaxed);
            if (++state.retries > options_.max_retries) {
              out.failures[i] =
                  ErrorReplyStatus(error, Cat(what, " at ", group.node->address.Endpoint()));
              continue;
            }
            again.push_back(i);
            pause = true;
            if (code == "CLUSTERDOWN") refresh = true;
            continue;
          }
          if (requests[i].script && !state.eval && code == "NOSCRIPT") {
            // This node has not cached the script (new, restarted or promoted): EVAL caches it.
            state.eval = true;
            again.push_back(i);
            continue;
          }
        }
        out.replies[i] = *std::move(reply);
        out.server_ms[i] = node_ms;
      }
    }
    groups.clear();  // connections back to their pools before pausing

    if (refresh) (void)Refresh();
    if (pause) {
      const auto delay = std::min(options_.backoff_min * (int64_t{1} << std::min(pause_round, 10)),
                                  options_.backoff_max);
      ++pause_round;
      std::this_thread::sleep_for(delay);
    }
    std::sort(again.begin(), again.end());
    pending = std::move(again);
  }
  return out;
}

}  // namespace idem::internal::redis
