// zlib's init functions are macros over versioned entry points; Swift needs real functions.
#ifndef SYNCD_CZLIB_SHIM_H
#define SYNCD_CZLIB_SHIM_H
#include <zlib.h>

static inline int syncd_deflate_init_raw(z_stream *stream, int level) {
    return deflateInit2(stream, level, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY);
}

static inline int syncd_inflate_init_raw(z_stream *stream) {
    return inflateInit2(stream, -15);
}
#endif
