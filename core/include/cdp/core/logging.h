// Boost.Log set-up shared by every daemon and tool.
//
// Lines go to stderr as "2026-11-26T04:14:00.123456Z journal-server[1234] info: message",
// friendly to journald (which adds its own timestamp) and to test logs.
// Thread-safe after InitLogging.
#pragma once

#include <boost/log/trivial.hpp>
#include <string>

namespace cdp {

enum class LogLevel { kTrace, kDebug, kInfo, kWarning, kError };

// Parses "trace|debug|info|warning|error"; false on anything else.
bool ParseLogLevel(const std::string& text, LogLevel* level);

// Installs the stderr sink with the component name and minimum level. Call once from main().
void InitLogging(const std::string& component, LogLevel level = LogLevel::kInfo);

}  // namespace cdp

#define CDP_LOG(severity) BOOST_LOG_TRIVIAL(severity)
