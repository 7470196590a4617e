// libxxhash, compiled inline so that no binary (the agent in particular) needs libxxhash.so at run time.
// With XXH_INLINE_ALL the public names are macros, which Swift cannot see; these wrappers give them names.
#ifndef SYNCD_CXXHASH_SHIM_H
#define SYNCD_CXXHASH_SHIM_H
#define XXH_INLINE_ALL
#include <xxhash.h>
#include <stdint.h>
#include <stddef.h>

typedef struct { uint64_t low; uint64_t high; } syncd_xxh128;

static inline syncd_xxh128 syncd_xxh3_128(const void *data, size_t length) {
    XXH128_hash_t h = XXH3_128bits(data, length);
    syncd_xxh128 out = { h.low64, h.high64 };
    return out;
}

static inline uint64_t syncd_xxh3_64(const void *data, size_t length) {
    return XXH3_64bits(data, length);
}

/// Streaming state, heap allocated so Swift never needs its layout.
static inline void *syncd_xxh3_state_new(void) {
    XXH3_state_t *state = XXH3_createState();
    if (state) XXH3_128bits_reset(state);
    return state;
}

static inline void syncd_xxh3_state_free(void *state) { XXH3_freeState((XXH3_state_t *)state); }

static inline void syncd_xxh3_state_reset(void *state) { XXH3_128bits_reset((XXH3_state_t *)state); }

static inline void syncd_xxh3_state_update(void *state, const void *data, size_t length) {
    XXH3_128bits_update((XXH3_state_t *)state, data, length);
}

static inline syncd_xxh128 syncd_xxh3_state_digest(void *state) {
    XXH128_hash_t h = XXH3_128bits_digest((XXH3_state_t *)state);
    syncd_xxh128 out = { h.low64, h.high64 };
    return out;
}
#endif
