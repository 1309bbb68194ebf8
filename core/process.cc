#include "cdp/core/process.h"

#include <malloc.h>

namespace cdp {

void TuneAllocatorForLargeBuffers(int mmap_threshold, int trim_threshold) {
  mallopt(M_MMAP_THRESHOLD, mmap_threshold);
  mallopt(M_TRIM_THRESHOLD, trim_threshold);
}

}  // namespace cdp
