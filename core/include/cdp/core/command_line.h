// Command-line parsing shared by the daemons' main() functions (Boost.Program_options).
#pragma once

#include <boost/program_options.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "cdp/core/logging.h"

namespace cdp {

// Adds the flags every daemon has: --help and --log-level (bound to *log_level, default info).
void AddCommonFlags(boost::program_options::options_description* desc, std::string* log_level);

// Parses argv against `desc` into *vm and `log_level` (the string AddCommonFlags bound) into
// *level. Returns nullopt when the program should go on; otherwise the exit code: 0 after
// printing --help to stdout, 2 after one line "PROGRAM: REASON; see --help" on stderr.
std::optional<int> ParseCommandLine(std::string_view program, int argc, char** argv,
                                    const boost::program_options::options_description& desc,
                                    boost::program_options::variables_map* vm,
                                    const std::string& log_level, LogLevel* level);

}  // namespace cdp
