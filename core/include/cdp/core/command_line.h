// Command-line parsing shared by the daemons' main() functions (Boost.Program_options).
#pragma once

#include <boost/program_options.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "cdp/core/logging.h"

namespace cdp {

// Adds the flags every daemon has to `desc` (after its own, so --help lists them last): --help
// and --log-level (trace|debug|info|warning|error, default info). Then parses argv against it
// into *vm and the log level into *level. Returns nullopt when the program should go on;
// otherwise the exit code: 0 after printing --help to stdout, 2 after one line
// "PROGRAM: REASON; see --help" on stderr.
std::optional<int> ParseCommandLine(std::string_view program, int argc, char** argv,
                                    boost::program_options::options_description* desc,
                                    boost::program_options::variables_map* vm, LogLevel* level);

// Prints "PROGRAM: MESSAGE" on stderr and returns 2, the exit code of a usage error (a flag's
// value that parsed but is wrong).
int UsageError(std::string_view program, std::string_view message);

}  // namespace cdp
