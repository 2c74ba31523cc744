// The store URI grammar (internal/uri.h). Parsing and redaction share one function, so that what
// RedactUri hides is exactly what the parser reads as a secret.
#include "internal/uri.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "internal/status_macros.h"
#include "internal/strings.h"

namespace idem::internal {
namespace {

// A half-open byte range of the original text.
struct Span {
  std::size_t begin = 0;
  std::size_t end = 0;
};

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool IsSchemeChar(char c, bool first) {
  if (absl::ascii_isalpha(static_cast<unsigned char>(c))) return true;
  if (first) return false;
  return absl::ascii_isdigit(static_cast<unsigned char>(c)) || c == '+' || c == '.' || c == '-';
}


// Parses `text`; every byte range that holds a secret is appended to `secrets` (also on failure,
// as far as parsing got, although redaction of a rejected text hides everything anyway).
absl::StatusOr<Uri> Parse(std::string_view text, std::vector<Span>* secrets) {
  const auto scheme = SplitScheme(text);
  if (!scheme) {
    return absl::InvalidArgumentError(
        "store URI has no valid scheme: expected scheme:... (e.g. memory:, sqlite:///path.db, "
        "redis://host:port/db)");
  }
  Uri uri;
  uri.scheme = scheme->first;
  const std::string_view s = uri.scheme;
  if (text.find('#') != std::string_view::npos) {
    return UriError(s, "a fragment ('#') is not allowed; percent-encode '#' as %23");
  }
  std::size_t pos = scheme->second;
  const std::size_t query_begin = std::min(text.find('?', pos), text.size());

  if (text.substr(pos, 2) == "//") {
    uri.has_authority = true;
    pos += 2;
    const std::size_t authority_end = std::min(text.find('/', pos), query_begin);
    std::string_view authority = text.substr(pos, authority_end - pos);
    std::size_t host_begin = pos;
    if (const std::size_t at = authority.rfind('@'); at != std::string_view::npos) {
      const std::string_view userinfo = authority.substr(0, at);
      // The whole userinfo is the secret: "a:b@" may be a user and a password, or (as Redis
      // reads "secret@") a password holding ':', so no part of it is ever shown.
      secrets->push_back({pos, pos + at});
      const std::size_t colon = userinfo.find(':');
      if (colon == std::string_view::npos) {
        IDEM_ASSIGN_OR_RETURN(uri.user, PercentDecode(s, "user info", userinfo));
      } else {
        IDEM_ASSIGN_OR_RETURN(uri.user, PercentDecode(s, "user name", userinfo.substr(0, colon)));
        IDEM_ASSIGN_OR_RETURN(uri.password,
                              PercentDecode(s, "password", userinfo.substr(colon + 1)));
      }
      host_begin = pos + at + 1;
    }
    std::string_view hostport = text.substr(host_begin, authority_end - host_begin);
    std::string_view port;
    if (!hostport.empty() && hostport.front() == '[') {
      const std::size_t close = hostport.find(']');
      if (close == std::string_view::npos) return UriError(s, "unterminated [IPv6] host");
      const std::string_view rest = hostport.substr(close + 1);
      if (!rest.empty()) {
        if (rest.front() != ':') return UriError(s, "unexpected text after the [IPv6] host");
        port = rest.substr(1);
        if (port.empty()) return UriError(s, "empty port");
      }
      hostport = hostport.substr(1, close - 1);
      if (hostport.empty()) return UriError(s, "empty [IPv6] host");
    } else if (const std::size_t colon = hostport.rfind(':'); colon != std::string_view::npos) {
      port = hostport.substr(colon + 1);
      hostport = hostport.substr(0, colon);
      if (port.empty()) return UriError(s, "empty port");
    }
    if (!port.empty()) {
      IDEM_ASSIGN_OR_RETURN(uri.port, ParseUriInteger(s, "the port", port, 1, 65535));
    }
    IDEM_ASSIGN_OR_RETURN(uri.host, PercentDecode(s, "host", hostport));
    pos = authority_end;
    // After a non-empty authority a raw '@' can only be the end of a userinfo whose password held
    // an unescaped '/' or '?': refuse it rather than read half a password as a path or query.
    if (authority_end > scheme->second + 2 &&
        text.find('@', authority_end) != std::string_view::npos) {
      return UriError(s, "'@' after the host: percent-encode '/', '?' and '@' in a password");
    }
  }
  IDEM_ASSIGN_OR_RETURN(uri.path, PercentDecode(s, "path", text.substr(pos, query_begin - pos)));

  pos = query_begin + 1;
  while (pos <= text.size() && query_begin < text.size()) {
    const std::size_t amp = std::min(text.find('&', pos), text.size());
    const std::string_view pair = text.substr(pos, amp - pos);
    const std::size_t pair_begin = pos;
    pos = amp + 1;
    if (pair.empty()) continue;
    const std::size_t eq = pair.find('=');
    if (eq == std::string_view::npos || eq == 0) {
      // The whole pair could be a mistyped secret: it is never quoted.
      return UriError(s, "each query option must be name=value");
    }
    std::string name(pair.substr(0, eq));
    if (IsSecretOptionName(name)) secrets->push_back({pair_begin + eq + 1, amp});
    for (const UriOption& option : uri.query) {
      if (option.name == name) {
        return UriError(s, absl::StrCat("query option ", QuoteForError(name), " is given twice"));
      }
    }
    UriOption option{.name = std::move(name), .value = {}};
    IDEM_ASSIGN_OR_RETURN(option.value, PercentDecode(s, "query", pair.substr(eq + 1)));
    uri.query.push_back(std::move(option));
  }
  return uri;
}

}  // namespace

std::optional<std::pair<std::string, std::size_t>> SplitScheme(std::string_view text) {
  const std::size_t colon = text.find(':');
  if (colon == std::string_view::npos || colon == 0 || colon > 32) return std::nullopt;
  for (std::size_t i = 0; i < colon; ++i) {
    if (!IsSchemeChar(text[i], i == 0)) return std::nullopt;
  }
  return std::make_pair(absl::AsciiStrToLower(ToAbsl(text.substr(0, colon))), colon + 1);
}

const std::string* Uri::Option(std::string_view name) const {
  for (const UriOption& option : query) {
    if (option.name == name) return &option.value;
  }
  return nullptr;
}

absl::StatusOr<Uri> ParseUri(std::string_view text) {
  std::vector<Span> secrets;
  return Parse(text, &secrets);
}

std::string RedactUriText(std::string_view text) {
  std::vector<Span> secrets;
  if (!Parse(text, &secrets).ok()) {
    const auto scheme = SplitScheme(text);
    return scheme ? absl::StrCat(scheme->first, ":<malformed URI hidden>")
                  : std::string("<malformed URI hidden>");
  }
  std::string out;
  out.reserve(text.size());
  std::size_t pos = 0;
  for (const Span& span : secrets) {  // in text order: userinfo first, then query options
    out.append(text.substr(pos, span.begin - pos));
    out.append("***");
    pos = span.end;
  }
  out.append(text.substr(pos));
  return out;
}

bool IsSecretOptionName(std::string_view name) {
  const std::string lower = absl::AsciiStrToLower(ToAbsl(name));
  return lower.find("pass") != std::string::npos || lower.find("secret") != std::string::npos;
}

absl::Status UriError(std::string_view scheme, std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("malformed ", ToAbsl(scheme), ": URI: ", ToAbsl(what)));
}

std::string QuoteForError(std::string_view value) {
  constexpr std::size_t kMax = 32;
  std::string out = "'";
  for (std::size_t i = 0; i < std::min(value.size(), kMax); ++i) {
    const unsigned char c = static_cast<unsigned char>(value[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\' && c != '\'') {
      out.push_back(static_cast<char>(c));
    } else {
      static constexpr char kHex[] = "0123456789abcdef";
      out.append({'\\', 'x', kHex[c >> 4], kHex[c & 15]});
    }
  }
  out.push_back('\'');
  if (value.size() > kMax) absl::StrAppend(&out, "... (", value.size(), " bytes)");
  return out;
}

absl::Status UnknownUriOption(std::string_view scheme, std::string_view name,
                              std::initializer_list<std::string_view> known) {
  std::string list;
  for (std::string_view k : known) {
    if (!list.empty()) list.append(", ");
    list.append(k);
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown option ", QuoteForError(name), " for ",
                                                 ToAbsl(scheme), ": URIs (known: ", list, ")"));
}

absl::StatusOr<int64_t> ParseUriInteger(std::string_view scheme, std::string_view what,
                                        std::string_view value, int64_t min, int64_t max) {
  int64_t n = 0;
  const bool digits =
      !value.empty() && value.size() <= 18 &&
      std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; });
  if (!digits || !absl::SimpleAtoi(ToAbsl(value), &n) || n < min || n > max) {
    return UriError(scheme,
                    absl::StrCat(ToAbsl(what), " must be an integer from ", min, " to ", max));
  }
  return n;
}

absl::StatusOr<bool> ParseUriBool(std::string_view scheme, std::string_view what,
                                  std::string_view value) {
  const std::string v = absl::AsciiStrToLower(ToAbsl(value));
  if (v == "1" || v == "true") return true;
  if (v == "0" || v == "false") return false;
  return UriError(scheme, absl::StrCat(ToAbsl(what), " must be 0 or 1 (or true/false)"));
}

absl::StatusOr<std::string> PercentDecode(std::string_view scheme, std::string_view part,
                                          std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '%') {
      out.push_back(text[i]);
      continue;
    }
    const int high = i + 2 < text.size() ? HexValue(text[i + 1]) : -1;
    const int low = i + 2 < text.size() ? HexValue(text[i + 2]) : -1;
    if (high < 0 || low < 0) {
      return UriError(scheme, absl::StrCat("bad percent-encoding in the ", ToAbsl(part)));
    }
    out.push_back(static_cast<char>(high * 16 + low));
    i += 2;
  }
  return out;
}

}  // namespace idem::internal
