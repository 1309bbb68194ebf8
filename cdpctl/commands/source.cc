// cdpctl source status|quiesce|hold|release|fence|hashes: the source server's cdp-agent, reached
// through the journal-server's relay (docs/wire-protocol.md, "Source control") — what the
// cutover's `quiesce: agent` does, step by step, for an operator or a test.
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "command.h"

namespace cdp::ctl {
namespace {

namespace v1 = wire::v1;

constexpr int kSourceCallMs = 15000;
constexpr uint32_t kHoldMs = 30000;
constexpr uint32_t kFreezeBudgetMs = 5000;

ExitCode Hashes(const Args& args, journal::ControlClient& client, v1::SourceRequest request) {
  uint64_t offset = 0, length = 0, chunk = 0;
  if ((args.offset != "0" && !ParseBytes(args.offset, &offset)) ||
      (args.length != "0" && !ParseBytes(args.length, &length)) ||
      !ParseBytes(args.chunk, &chunk) || chunk == 0) {
    return Usage("bad --offset, --length or --chunk (bytes, or with K/M/G)");
  }
  // One request per 256 MiB (and at most 4096 regions): what the agent takes at a time
  // (docs/wire-protocol.md, "Source control"); the lines come as each request is answered.
  constexpr uint64_t kRequestBytes = 256ull << 20;
  constexpr int kRequestRegions = 4096;
  if (chunk > kRequestBytes) {
    return Usage("--chunk " + args.chunk + " is over the agent's 256 MiB per request");
  }
  if (length == 0) {
    auto status = client.Status(kSourceCallMs);
    if (!status.ok()) return Fail("source hashes", status.status());
    bool known = false;
    for (const auto& v : status->volumes()) {
      if (v.name() != args.volume) continue;
      known = true;
      if (v.size_bytes() > offset) length = v.size_bytes() - offset;
    }
    if (!known) {
      return Fail("source hashes",
                  Status::NotFound("the journal-server has no volume '" + args.volume + "'"));
    }
  }
  char hex[17];
  nlohmann::json regions = nlohmann::json::array();
  for (uint64_t pos = offset; pos < offset + length;) {
    auto* h = request.mutable_hashes();
    h->Clear();
    h->set_volume(args.volume);
    uint64_t bytes = 0;
    while (pos < offset + length && h->regions_size() < kRequestRegions &&
           (h->regions_size() == 0 ||
            bytes + std::min(chunk, offset + length - pos) <= kRequestBytes)) {
      auto* r = h->add_regions();
      r->set_offset(pos);
      r->set_length(std::min(chunk, offset + length - pos));
      bytes += r->length();
      pos += r->length();
    }
    auto reply = client.Source(request, 600000);
    if (!reply.ok()) return Fail("source hashes", reply.status());
    if (reply->xxh3_size() != h->regions_size()) {
      return Fail("source hashes",
                  Status::ProtocolMismatch("the agent sent " + std::to_string(reply->xxh3_size()) +
                                           " hashes for " + std::to_string(h->regions_size()) +
                                           " regions"));
    }
    for (int i = 0; i < h->regions_size(); ++i) {
      snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(reply->xxh3(i)));
      if (args.json) {
        regions.push_back({{"offset", h->regions(i).offset()},
                           {"length", h->regions(i).length()},
                           {"xxh3", hex}});
      } else {
        std::cout << h->regions(i).offset() << " " << h->regions(i).length() << " " << hex
                  << std::endl;
      }
    }
  }
  if (args.json)
    std::cout << nlohmann::json({{"volume", args.volume}, {"regions", regions}}).dump() << "\n";
  return ExitCode::kOk;
}

ExitCode RunSource(const Args& args) {
  const std::string& sub = args.subcommand;
  if (sub != "status" && sub != "quiesce" && sub != "hold" && sub != "release" && sub != "fence" &&
      sub != "hashes") {
    return Usage("source needs status, quiesce, hold, release, fence or hashes (got '" + sub +
                 "')");
  }
  if (args.volume.empty()) return Usage("source " + sub + " needs --volume NAME");
  if (sub == "fence" && args.addresses.empty()) {
    return Usage("source fence needs --address ADDR (repeat it for more)");
  }
  auto client = ConnectToServer(args);
  if (client == nullptr) return ExitCode::kError;
  v1::SourceRequest request;
  request.set_volume(args.volume);
  if (sub == "hashes") return Hashes(args, *client, request);
  if (sub == "status") request.mutable_status();
  if (sub == "quiesce") {
    request.mutable_quiesce()->add_volumes(args.volume);
    request.mutable_quiesce()->set_freeze_budget_ms(kFreezeBudgetMs);
    request.mutable_quiesce()->set_hold_ms(kHoldMs);
    request.mutable_quiesce()->set_label(args.label.empty() ? "operator" : args.label);
  }
  if (sub == "hold") request.mutable_hold()->set_hold_ms(kHoldMs);
  if (sub == "release") request.mutable_release();
  if (sub == "fence") {
    request.mutable_fence()->set_action(v1::FENCE_REMOVE_ADDRESSES);
    for (const auto& a : args.addresses) request.mutable_fence()->add_addresses(a);
  }
  auto reply = client->Source(request, kSourceCallMs);
  if (!reply.ok()) {
    Fail("source " + sub, reply.status());
    return reply.status().IsTimedOut() ? ExitCode::kTimedOut : ExitCode::kError;
  }
  if (args.json) {
    nlohmann::json volumes = nlohmann::json::array();
    for (const auto& v : reply->volumes()) {
      volumes.push_back({{"volume", v.volume()},
                         {"final_lsn", v.final_lsn()},
                         {"mount_points", v.mount_points()}});
    }
    std::cout << nlohmann::json({{"done", reply->done()},
                                 {"frozen", reply->frozen()},
                                 {"can_freeze", reply->can_freeze()},
                                 {"held_seconds", reply->held_seconds()},
                                 {"volumes", volumes}})
                     .dump()
              << "\n";
    return ExitCode::kOk;
  }
  for (const auto& v : reply->volumes()) {
    std::cout << v.volume() << (v.final_lsn() ? " final LSN " + std::to_string(v.final_lsn()) : "")
              << (v.mount_points().empty() ? "" : " mounts " + v.mount_points()) << "\n";
  }
  if (sub == "status") {
    std::cout << (reply->can_freeze() ? "can freeze" : "cannot freeze: " + reply->done()) << "; "
              << (reply->frozen() ? "frozen" : "not frozen") << "\n";
  } else if (!reply->done().empty()) {
    std::cout << reply->done() << "\n";
  }
  return ExitCode::kOk;
}

}  // namespace

const Command kSourceCommand = {
    "source", true,
    "  cdpctl --server tcp://HOST:PORT source status|quiesce|hold|release --volume NAME [--json]\n"
    "  cdpctl --server tcp://HOST:PORT source fence --volume NAME --address ADDR [--address ...]\n"
    "  cdpctl --server tcp://HOST:PORT source hashes --volume NAME [--offset BYTES]\n"
    "                                  [--length BYTES] [--chunk BYTES] [--json]\n"
    "      the source's cdp-agent, through the journal-server (what a cutover with quiesce:\n"
    "      agent does, docs/cutover.md): its volumes, mount points and freeze; freeze every\n"
    "      filesystem and hold it 30 s (quiesce), renew that (hold), thaw (release); remove\n"
    "      service addresses from its NICs (fence); XXH3-64 of its device per chunk, read by the\n"
    "      agent: one line 'OFFSET LENGTH XXH3' each, as cdpctl target checksum prints\n",
    RunSource};

}  // namespace cdp::ctl
