// OpenStore: dispatch on the URI scheme over a table that the build generates from the backends it
// has (idem_generate_open_store_table in the top-level CMakeLists.txt). Each backend owns its URI
// options and its opener; the grammar they share is internal/uri.h.
#include "idem/open_store.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "internal/strings.h"
#include "internal/uri.h"

namespace idem::internal {

using Opener = absl::StatusOr<std::unique_ptr<DedupStore>> (*)(std::string_view,
                                                               const OpenOptions&);
struct SchemeEntry {
  std::string_view scheme;   // lower case
  std::string_view backend;  // the backends/ folder that serves it
  Opener open;               // nullptr: that backend is not built
};

}  // namespace idem::internal

#include "open_store_table.inc"

namespace idem {

std::string RedactUri(std::string_view uri) { return internal::RedactUriText(uri); }

absl::StatusOr<std::unique_ptr<DedupStore>> OpenStore(std::string_view uri,
                                                      const OpenOptions& options) {
  std::string known;
  for (const internal::SchemeEntry& entry : internal::kSchemes) {
    absl::StrAppend(&known, known.empty() ? "" : ", ", internal::ToAbsl(entry.scheme));
  }
  const auto split = internal::SplitScheme(uri);
  if (!split) {
    return absl::InvalidArgumentError(
        absl::StrCat("store URI has no scheme: expected one of ", known,
                     " (e.g. memory:, sqlite:///path.db, redis://host:6379/0)"));
  }
  const std::string& scheme = split->first;
  for (const internal::SchemeEntry& entry : internal::kSchemes) {
    if (entry.scheme != scheme) continue;
    if (entry.open == nullptr) {
      return absl::UnimplementedError(
          absl::StrCat(scheme, ": URIs need the ", internal::ToAbsl(entry.backend),
                       " backend, which this build of idem does not have"));
    }
    return entry.open(uri, options);
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown store URI scheme ", internal::QuoteForError(scheme), ": expected one of ", known));
}

}  // namespace idem
