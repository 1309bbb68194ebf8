# Install-time script (install(CODE) of the agent component, CDP_AGENT_BUNDLE_LIBS=ON): copies
# every shared library that CDP_BUNDLE_EXECUTABLES need, directly or through another library,
# into CDP_BUNDLE_LIB_DIR (a destination for file(INSTALL), which adds DESTDIR itself), except
# the C and C++ runtimes that every Debian system has (glibc, libstdc++, libgcc_s). The
# executables find them through their RPATH $ORIGIN/../lib/cdp-agent. Each library's licence
# (its Debian package's copyright file) goes to CDP_BUNDLE_DOC_DIR/third-party/SOURCE.copyright
# (one per Debian source package), and CDP_BUNDLE_DOC_DIR/bundled-libraries lists
# "SONAME PACKAGE VERSION" per library. CDP_BUNDLE_DOC_DIR is a path to write to (DESTDIR
# included). Fails, naming the library, when one cannot be resolved or belongs to no Debian
# package.

# The runtimes the package depends on instead (libc6, libstdc++6, libgcc-s1): never bundled.
set(runtime_regexes
  "^ld-linux" "^libc\\.so" "^libm\\.so" "^libpthread\\.so" "^libdl\\.so" "^librt\\.so"
  "^libresolv\\.so" "^libutil\\.so" "^libmvec\\.so" "^libstdc\\+\\+\\.so" "^libgcc_s\\.so")
file(GET_RUNTIME_DEPENDENCIES
  EXECUTABLES ${CDP_BUNDLE_EXECUTABLES}
  RESOLVED_DEPENDENCIES_VAR resolved
  UNRESOLVED_DEPENDENCIES_VAR unresolved
  PRE_EXCLUDE_REGEXES ${runtime_regexes}
  POST_EXCLUDE_FILES_STRICT)
if(unresolved)
  message(FATAL_ERROR "bundling the agent's libraries: cannot find ${unresolved} (needed by "
    "${CDP_BUNDLE_EXECUTABLES}); install the missing package (deploy/install-deps.sh)")
endif()

file(MAKE_DIRECTORY "${CDP_BUNDLE_DOC_DIR}/third-party")
set(listing "")
list(SORT resolved)
foreach(lib IN LISTS resolved)
  get_filename_component(soname "${lib}" NAME)
  # The soname itself (a symlink on Debian) and the file it names; both land in the directory.
  file(INSTALL "${lib}" DESTINATION "${CDP_BUNDLE_LIB_DIR}" FOLLOW_SYMLINK_CHAIN)
  # dpkg knows the library under the path its package installed (/usr/lib/... or /lib/...).
  file(REAL_PATH "${lib}" real)
  get_filename_component(real_name "${real}" NAME)
  set(package "")
  foreach(dir IN ITEMS /usr/lib/x86_64-linux-gnu /lib/x86_64-linux-gnu)
    execute_process(COMMAND dpkg-query -S "${dir}/${real_name}"
      OUTPUT_VARIABLE owner RESULT_VARIABLE rc ERROR_QUIET OUTPUT_STRIP_TRAILING_WHITESPACE)
    if(rc EQUAL 0)
      string(REGEX REPLACE ":.*" "" package "${owner}")
      break()
    endif()
  endforeach()
  if(package STREQUAL "")
    message(FATAL_ERROR "bundling the agent's libraries: ${lib} (${real}) belongs to no Debian "
      "package, so its licence is unknown; build the package on Debian 12 with "
      "deploy/install-deps.sh")
  endif()
  string(REGEX REPLACE ":.*" "" bare_package "${package}")
  execute_process(COMMAND dpkg-query -W -f=\${Version}\t\${source:Package} "${package}"
    OUTPUT_VARIABLE version_source OUTPUT_STRIP_TRAILING_WHITESPACE)
  string(REGEX REPLACE "\t.*" "" version "${version_source}")
  string(REGEX REPLACE ".*\t" "" source "${version_source}")
  # Read and written, not copied: some packages' doc directories are symlinks.
  file(READ "/usr/share/doc/${bare_package}/copyright" copyright)
  file(WRITE "${CDP_BUNDLE_DOC_DIR}/third-party/${source}.copyright" "${copyright}")
  string(APPEND listing "${soname} ${bare_package} ${version}\n")
endforeach()
file(WRITE "${CDP_BUNDLE_DOC_DIR}/bundled-libraries" "${listing}")
