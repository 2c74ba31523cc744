// The store URI grammar, OpenStore's dispatch and RedactUri: exact codes per input, the shapes of
// password that redaction once missed, bounded error texts, and a property test over generated
// URIs that the password never appears in a redacted URI or in a status.
#include "internal/uri.h"

#include <cctype>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "idem/open_store.h"
#include "testing/status_matchers.h"

namespace idem {
namespace {

using ::idem::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;

TEST(ParseUri, SplitsEveryPart) {
  IDEM_ASSERT_OK_AND_ASSIGN(
      const internal::Uri uri,
      internal::ParseUri("Redis://al%69ce:p%40ss:w@rd@[::1]:6390/2?prefix=a%26b&db=3"));
  EXPECT_EQ(uri.scheme, "redis");
  EXPECT_TRUE(uri.has_authority);
  EXPECT_EQ(uri.user, "alice");
  EXPECT_EQ(uri.password, "p@ss:w@rd");  // the userinfo ends at the last '@'
  EXPECT_EQ(uri.host, "::1");
  EXPECT_EQ(uri.port, 6390);
  EXPECT_EQ(uri.path, "/2");
  ASSERT_NE(uri.Option("prefix"), nullptr);
  EXPECT_EQ(*uri.Option("prefix"), "a&b");
  EXPECT_EQ(uri.Option("nope"), nullptr);

  IDEM_ASSERT_OK_AND_ASSIGN(const internal::Uri plain, internal::ParseUri("sqlite:rel%20x.db"));
  EXPECT_FALSE(plain.has_authority);
  EXPECT_EQ(plain.path, "rel x.db");
  IDEM_ASSERT_OK_AND_ASSIGN(const internal::Uri sock, internal::ParseUri("unix://pw@/a/b.sock"));
  EXPECT_EQ(sock.user, "pw");
  EXPECT_FALSE(sock.password.has_value());
  EXPECT_EQ(sock.host, "");
  EXPECT_EQ(sock.path, "/a/b.sock");
}

TEST(ParseUri, RefusesWhatItCannotReadSafely) {
  for (const char* text :
       {"", "noscheme", ":x", "1redis://h", "redis://h#frag", "redis://u:pa/ss@host/0",
        "redis://u:12?a=b@host", "redis://h:", "redis://h:65536", "redis://h:x", "redis://[::1",
        "redis://[]:1", "redis://h/%zz", "redis://h?=1", "redis://h?a", "redis://h?a=1&a=2"}) {
    EXPECT_THAT(internal::ParseUri(text), StatusIs(absl::StatusCode::kInvalidArgument)) << text;
  }
}

// Each input has one right answer: InvalidArgument for a malformed URI, Unimplemented only for a
// scheme whose backend this build lacks.
TEST(OpenStore, MalformedUrisAreInvalidArgument) {
  for (const char* uri :
       {"", "memory", ":memory", "nosuch://x", "memory:/path", "memory://host",
        "memory:?capacity=0", "memory:?capacity=abc", "memory:?capacity=10x", "memory:?evict=yes",
        "memory:?bogus=1", "memory:?=1", "memory:?capacity=1&capacity=2", "memory:#x"}) {
    EXPECT_THAT(OpenStore(uri), StatusIs(absl::StatusCode::kInvalidArgument)) << uri;
  }
}

TEST(OpenStore, NamesTheKnownSchemesForAnUnknownOne) {
  const absl::Status status = OpenStore("nosuch://x").status();
  EXPECT_THAT(std::string(status.message()), HasSubstr("memory"));
}

TEST(OpenStore, PassesOptionsToTheStore) {
  ManualClock clock(5'000);
  uint64_t next = 41;
  OpenOptions options;
  options.clock = &clock;
  options.token_source = [&next] { return ++next; };
  IDEM_ASSERT_OK_AND_ASSIGN(auto store, OpenStore("memory:?capacity=2&evict=1", options));
  IDEM_ASSERT_OK_AND_ASSIGN(ClaimResult claim, store->Claim({.scope = "s", .id = "a"}));
  EXPECT_EQ(claim.token, 42u);
  EXPECT_EQ(claim.lease_until_ms, 5'000 + kDefaultLease.count());
}

TEST(RedactUri, HidesEveryShapeOfPassword) {
  // The shapes the issue tracker recorded, and the ordinary ones.
  EXPECT_EQ(RedactUri("redis://user:s3cret@127.0.0.1:6379/0"), "redis://***@127.0.0.1:6379/0");
  EXPECT_EQ(RedactUri("redis://:s3cret@h:1"), "redis://***@h:1");
  EXPECT_EQ(RedactUri("redis://secret@host:6379/0"), "redis://***@host:6379/0");
  EXPECT_EQ(RedactUri("unix://secret@/path/to.sock"), "unix://***@/path/to.sock");
  EXPECT_EQ(RedactUri("redis://user:p@ss@host/0"), "redis://***@host/0");
  EXPECT_EQ(RedactUri("redis://user:pa/ss@host/0"), "redis:<malformed URI hidden>");
  EXPECT_EQ(RedactUri("redis://h:1/0?password=s3cret"), "redis://h:1/0?password=***");
  EXPECT_EQ(RedactUri("unix:///run/redis.sock?db=2&password=s3cret&prefix=p"),
            "unix:///run/redis.sock?db=2&password=***&prefix=p");
  EXPECT_EQ(RedactUri("postgresql://app:pw@db/x?sslpassword=k&PASS=z"),
            "postgresql://***@db/x?sslpassword=***&PASS=***");
  EXPECT_EQ(RedactUri("redis://h:1/0"), "redis://h:1/0");
  EXPECT_EQ(RedactUri("sqlite:///tmp/a@b.db"), "sqlite:///tmp/a@b.db");
  EXPECT_EQ(RedactUri("not a uri: pw@host"), "<malformed URI hidden>");
}

TEST(OpenStore, ErrorsQuoteAtMostAShortPrefixOfTheInput) {
  const std::string huge(1 << 20, 'x');
  for (const std::string& uri :
       {absl::StrCat("memory:?", huge, "=1"), absl::StrCat("memory:?capacity=", huge),
        absl::StrCat("memory:", huge), absl::StrCat(huge, "://h"),
        absl::StrCat("nosuch", huge, ":"), absl::StrCat("memory:?capacity=1&", huge),
        absl::StrCat("redis://", huge, ":1/0"), absl::StrCat("unix:///", huge),
        absl::StrCat("sqlite:///x.db?", huge, "=1")}) {
    const absl::Status status = OpenStore(uri).status();
    EXPECT_FALSE(status.ok());
    EXPECT_LT(status.message().size(), 400u) << status.message().substr(0, 200);
  }
  EXPECT_LT(RedactUri(absl::StrCat(huge, "://h")).size(), 100u);
}

// Generated URIs in every shape a password can take, with the characters that break naive
// parsers inside it: whatever the parser makes of each (accepted or refused, by any backend), the
// password never appears in RedactUri's output nor in the status of OpenStore.
TEST(RedactUri, PropertyThePasswordNeverAppears) {
  std::mt19937_64 rng(20261201);
  auto pick = [&](std::initializer_list<const char*> options) {
    std::vector<const char*> v(options);
    return std::string(v[rng() % v.size()]);
  };
  constexpr std::string_view kAlphabet =
      "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789/@:?#&=%+!$*.-_~[] ";
  auto encode = [](std::string_view raw) {
    std::string out;
    for (char c : raw) {
      if (std::isalnum(static_cast<unsigned char>(c))) {
        out.push_back(c);
      } else {
        absl::StrAppend(&out, "%", absl::Hex(static_cast<unsigned char>(c), absl::kZeroPad2));
      }
    }
    return out;
  };
  int checked = 0;
  for (int i = 0; i < 4000; ++i) {
    std::string password = "Zq";
    const int length = 6 + static_cast<int>(rng() % 12);
    for (int k = 0; k < length; ++k) password.push_back(kAlphabet[rng() % kAlphabet.size()]);
    const bool encoded = rng() % 3 == 0;
    const std::string written = encoded ? encode(password) : password;
    const std::string scheme = pick({"redis", "REDIS", "rediss", "unix", "sqlite", "memory",
                                     "postgresql", "postgres", "nosuch"});
    // 127.0.0.1:1 refuses connections at once, so an accepted server URI fails fast.
    const std::string host = pick({"127.0.0.1:1", "[::1]:1", "", "localhost:1"});
    const std::string path = pick({"", "/0", "/tmp/x.db", "/db", "/a@b"});
    const std::string query = pick({"", "?db=1", "?prefix=p&timeout_ms=50", "?bogus=1", "?&"});
    std::string uri;
    switch (rng() % 7) {
      case 0:
        uri = absl::StrCat(scheme, "://user:", written, "@", host, path, query);
        break;
      case 1:
        uri = absl::StrCat(scheme, "://", written, "@", host, path, query);
        break;
      case 2:
        uri = absl::StrCat(scheme, "://:", written, "@", host, path, query);
        break;
      case 3:
        uri = absl::StrCat(scheme, "://", host, path, query, query.empty() ? "?" : "&",
                           "password=", written);
        break;
      case 4:
        uri = absl::StrCat(scheme, "://", written, "@", path, query);
        break;
      case 5:
        uri = absl::StrCat(scheme, ":", query, query.empty() ? "?" : "&", "password=", written,
                           rng() % 2 ? "&x=1" : "");
        break;
      default:
        uri = absl::StrCat(scheme, "://user:", written, "@/", path, query);
        break;
    }
    // A password cut by '&' or '=' in a query value is not one value any more: only its first
    // piece is the option's value. Those inputs still must not show that piece.
    std::string secret = password;
    if (!encoded && uri.find("password=") != std::string::npos) {
      secret = secret.substr(0, secret.find('&'));
    }
    if (secret.size() < 4) continue;
    ++checked;
    const std::string redacted = RedactUri(uri);
    EXPECT_THAT(redacted, Not(HasSubstr(secret))) << uri;
    EXPECT_THAT(redacted, Not(HasSubstr(written))) << uri;
    const absl::StatusOr<std::unique_ptr<DedupStore>> store = OpenStore(uri);
    if (!store.ok()) {
      EXPECT_THAT(std::string(store.status().message()), Not(HasSubstr(secret))) << uri;
      EXPECT_THAT(std::string(store.status().message()), Not(HasSubstr(written))) << uri;
    }
  }
  EXPECT_GT(checked, 3000);
}

}  // namespace
}  // namespace idem
