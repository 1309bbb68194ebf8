// XXH3-64 built without vector instructions (xxh3_impl.h): the xxhash header compiled inline
// into this file alone, its names static, so it never clashes with the linked library.
#define XXH_INLINE_ALL
#define XXH_VECTOR 0  // XXH_SCALAR
#include <xxhash.h>

#include "xxh3_impl.h"

namespace cdp::xxh3 {

namespace {

uint64_t Hash(const void* data, size_t n) { return XXH3_64bits(data, n); }
void* Create() { return XXH3_createState(); }
void Destroy(void* state) { XXH3_freeState(static_cast<XXH3_state_t*>(state)); }
void Reset(void* state) { XXH3_64bits_reset(static_cast<XXH3_state_t*>(state)); }
void Update(void* state, const void* data, size_t n) {
  XXH3_64bits_update(static_cast<XXH3_state_t*>(state), data, n);
}
uint64_t Digest(const void* state) {
  return XXH3_64bits_digest(static_cast<const XXH3_state_t*>(state));
}

}  // namespace

const Impl& Scalar() {
  static const Impl impl{"scalar", &Hash, &Create, &Destroy, &Reset, &Update, &Digest};
  return impl;
}

}  // namespace cdp::xxh3
