// The changes a boot adaptation makes to the migrated OS's root (docs/pe-agent.md §5, step
// adapt): planned first, in memory, by every adaptation (network, fstab, GRUB, services), then
// listed by a dry run or applied all together. Applying keeps each changed file's previous
// content beside it (FILE.cdp-pre-cutover) and appends one line per change to
// /var/log/cdp-takeover.log in the migrated root, so every change can be seen and undone.
//
// Paths are the migrated OS's ("/etc/fstab"), resolved with ResolveInRoot (root_path.h).
//
// Not thread-safe: one adaptation plans into one RootChanges.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "cdp/core/status.h"

namespace cdp::pe {

// The suffix of the copy of a file's previous content.
inline constexpr char kPreCutoverSuffix[] = ".cdp-pre-cutover";
// The log of the changes, in the migrated root.
inline constexpr char kTakeoverLog[] = "/var/log/cdp-takeover.log";

// One changed file, as the takeover reply lists it.
struct RootChange {
  std::string file;     // "/etc/network/interfaces"
  std::string what;     // what changed, e.g. "ens192: address 192.0.2.10/24 -> 198.51.100.7/24"
  std::string kept_at;  // where its previous content is kept; "" when the file is new
};

class RootChanges {
 public:
  // `root`: where the migrated OS's root filesystem is mounted.
  explicit RootChanges(std::string root);

  const std::string& root() const { return root_; }

  // The content of `file` as planned so far: the planned new content when a change was planned,
  // else the file's own. NotFound when it neither exists nor is planned (or is to be removed).
  Result<std::string> Read(const std::string& file) const;
  // True when `file` exists in the migrated root (or a change creates it), and is not planned
  // for removal.
  bool Exists(const std::string& file) const;

  // Plans `file`'s new content; `what` is appended to its description. A content equal to the
  // file's current one plans nothing.
  void Write(const std::string& file, std::string content, const std::string& what);
  // Plans `file` to become a symlink to `target` (e.g. /dev/null to mask a unit).
  void Symlink(const std::string& file, const std::string& target, const std::string& what);
  // Plans removing `file` (a symlink or a file; its previous content or link target is kept).
  void Remove(const std::string& file, const std::string& what);

  // The planned changes, one per file, in the order they were first planned.
  std::vector<RootChange> Changes() const;
  bool empty() const { return order_.empty(); }

  // Makes every planned change: for each file, its previous content is copied to
  // FILE.cdp-pre-cutover (a symlink's target to FILE.cdp-pre-cutover as a symlink), then the new
  // content is written beside it, fsynced and renamed over it (core's WriteFileAtomicWithMode,
  // the previous mode kept, 0644 for a new file; directories created as needed), or the link
  // made or the file removed; finally a line per change, stamped with `stamp` (e.g. the UTC
  // time), is appended to /var/log/cdp-takeover.log and fsynced. Stops at the first failure,
  // naming the file; changes made before it stay (each one is whole, with its backup).
  Status Apply(const std::string& stamp) const;

 private:
  enum class Kind { kWrite, kSymlink, kRemove };
  struct Planned {
    Kind kind = Kind::kWrite;
    std::string content;  // kWrite: the content; kSymlink: the target
    std::vector<std::string> whats;
    bool existed = false;
  };
  Planned& Plan(const std::string& file, Kind kind);

  std::string root_;
  std::map<std::string, Planned> planned_;
  std::vector<std::string> order_;
};

// The UTC time now as "2026-12-07T08:30:00Z", for RootChanges::Apply.
std::string UtcStamp();

}  // namespace cdp::pe
