// The one grammar of idem's store URIs, shared by OpenStore, RedactUri and every backend's opener.
//
//   uri       = scheme ":" [ "//" authority ] path [ "?" query ]
//   authority = [ userinfo "@" ] host [ ":" port ]
//
// - The scheme is [A-Za-z][A-Za-z0-9+.-]*, compared in lower case.
// - The authority ends at the first '/' or '?' after "//". The userinfo ends at the LAST '@' of
//   the authority, so an unescaped '@' inside a password still parses; a '/' inside a password
//   must be written %2F, a '?' %3F. After a non-empty authority, a raw '@' is refused: it can only
//   be the end of such a password, which would otherwise be read as a path or query and shown.
// - A userinfo without ':' is kept whole in `user` (Redis reads it as a password). Redaction masks
//   every userinfo in full: "a:b" may be a user and a password or one password holding ':'.
// - '#' is refused anywhere: a fragment is never meaningful for a store, and a password holding an
//   unescaped '#' would otherwise be cut short silently.
// - The port is decimal digits; a host may be "[v6 address]". Hosts may hold ',' (libpq's
//   multi-host lists); backends check hosts further.
// - Query options are name=value separated by '&'; a name may appear once; values are
//   percent-decoded, names are not.
//
// Error texts name the part of the URI that is wrong but never repeat the URI, its userinfo or
// an option value: a mistyped URI may hold its password anywhere. Option names are quoted
// through QuoteForError (at most a short prefix).
#ifndef IDEM_INTERNAL_URI_H_
#define IDEM_INTERNAL_URI_H_

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace idem::internal {

struct UriOption {
  std::string name;
  std::string value;  // percent-decoded
};

struct Uri {
  std::string scheme;  // lower case, without ':'
  bool has_authority = false;
  // Userinfo, percent-decoded. `has_password`: a ':' separated user and password.
  std::optional<std::string> user;
  std::optional<std::string> password;
  std::string host;  // percent-decoded; brackets of an IPv6 literal removed
  std::optional<int64_t> port;
  std::string path;  // percent-decoded, with its leading '/' when there is an authority
  std::vector<UriOption> query;

  // The decoded value of query option `name`, if given.
  const std::string* Option(std::string_view name) const;
};

// The scheme of `text` in lower case and the offset just past its ':', or nullopt when `text` does
// not start with a scheme of the grammar above (at most 32 characters).
std::optional<std::pair<std::string, std::size_t>> SplitScheme(std::string_view text);

// Parses `text` by the grammar above. InvalidArgument (naming the part) when it does not fit.
[[nodiscard]] absl::StatusOr<Uri> ParseUri(std::string_view text);

// `text` with every secret replaced by "***": the whole userinfo, and the value of every query
// option whose name holds "pass" or "secret". A text that ParseUri rejects is shown as its scheme
// only, followed by "<malformed URI hidden>".
std::string RedactUriText(std::string_view text);

// Whether query option `name` carries a secret (its value is never shown).
bool IsSecretOptionName(std::string_view name);

// "malformed <scheme> URI: <what>", as InvalidArgument.
absl::Status UriError(std::string_view scheme, std::string_view what);

// At most the first 32 bytes of `value`, with non-printable bytes escaped, and a note of the full
// length when it was cut: for error texts that must quote something of unbounded size.
std::string QuoteForError(std::string_view value);

// InvalidArgument naming an unknown option and listing the known ones.
absl::Status UnknownUriOption(std::string_view scheme, std::string_view name,
                              std::initializer_list<std::string_view> known);

// A decimal integer in [min, max]; InvalidArgument naming `what` otherwise (the value is quoted
// only through QuoteForError, and never for a secret option).
[[nodiscard]] absl::StatusOr<int64_t> ParseUriInteger(std::string_view scheme,
                                                      std::string_view what, std::string_view value,
                                                      int64_t min, int64_t max);

// A boolean option: 0, 1, true or false (any case).
[[nodiscard]] absl::StatusOr<bool> ParseUriBool(std::string_view scheme, std::string_view what,
                                                std::string_view value);

// Percent-decodes `text`; InvalidArgument naming `part` on a bad escape.
[[nodiscard]] absl::StatusOr<std::string> PercentDecode(std::string_view scheme,
                                                        std::string_view part,
                                                        std::string_view text);

}  // namespace idem::internal

#endif  // IDEM_INTERNAL_URI_H_
