#include "cdp/core/command_line.h"

#include <iostream>

namespace cdp {

namespace po = boost::program_options;

std::optional<int> ParseCommandLine(std::string_view program, int argc, char** argv,
                                    po::options_description* desc, po::variables_map* vm,
                                    LogLevel* level) {
  std::string log_level;
  desc->add_options()("help,h", "print this help and exit")(
      "log-level", po::value(&log_level)->default_value("info"), "trace|debug|info|warning|error");
  try {
    po::store(po::parse_command_line(argc, argv, *desc), *vm);
    if (vm->count("help")) {
      std::cout << *desc << "\n";
      return 0;
    }
    po::notify(*vm);
  } catch (const po::error& e) {
    std::cerr << program << ": " << e.what() << "; see --help\n";
    return 2;
  }
  if (!ParseLogLevel(log_level, level)) {
    std::cerr << program << ": bad --log-level '" << log_level
              << "': expected trace|debug|info|warning|error\n";
    return 2;
  }
  return std::nullopt;
}

int UsageError(std::string_view program, std::string_view message) {
  std::cerr << program << ": " << message << "\n";
  return 2;
}

}  // namespace cdp
