#include "cdp/core/logging.h"

#include <unistd.h>

#include <boost/log/attributes/clock.hpp>
#include <boost/log/core.hpp>
#include <boost/log/expressions.hpp>
#include <boost/log/support/date_time.hpp>
#include <boost/log/utility/setup/console.hpp>
#include <iostream>

namespace cdp {

namespace logging = boost::log;
namespace expr = boost::log::expressions;

bool ParseLogLevel(const std::string& text, LogLevel* level) {
  if (text == "trace")
    *level = LogLevel::kTrace;
  else if (text == "debug")
    *level = LogLevel::kDebug;
  else if (text == "info")
    *level = LogLevel::kInfo;
  else if (text == "warning")
    *level = LogLevel::kWarning;
  else if (text == "error")
    *level = LogLevel::kError;
  else
    return false;
  return true;
}

void InitLogging(const std::string& component, LogLevel level) {
  logging::core::get()->add_global_attribute("TimeStamp", boost::log::attributes::utc_clock());
  const std::string prefix = component + "[" + std::to_string(getpid()) + "] ";
  logging::add_console_log(
      std::clog, logging::keywords::auto_flush = true,
      logging::keywords::format =
          (expr::stream << expr::format_date_time<boost::posix_time::ptime>("TimeStamp",
                                                                            "%Y-%m-%dT%H:%M:%S.%f")
                        << "Z " << prefix << logging::trivial::severity << ": " << expr::smessage));
  logging::trivial::severity_level min = logging::trivial::info;
  switch (level) {
    case LogLevel::kTrace:
      min = logging::trivial::trace;
      break;
    case LogLevel::kDebug:
      min = logging::trivial::debug;
      break;
    case LogLevel::kInfo:
      min = logging::trivial::info;
      break;
    case LogLevel::kWarning:
      min = logging::trivial::warning;
      break;
    case LogLevel::kError:
      min = logging::trivial::error;
      break;
  }
  logging::core::get()->set_filter(logging::trivial::severity >= min);
}

}  // namespace cdp
