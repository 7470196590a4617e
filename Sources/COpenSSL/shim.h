// libcrypto (OpenSSL 3, already under libssh2 on the laptop) for SHA-256 and HMAC-SHA256, which S3's Signature
// Version 4 is made of. Only the laptop side links it; the agent never signs (hosts get presigned URLs).
#ifndef SYNCD_COPENSSL_SHIM_H
#define SYNCD_COPENSSL_SHIM_H
#include <openssl/sha.h>
#include <openssl/hmac.h>
#include <openssl/evp.h>

static inline void syncd_sha256(const void *data, size_t length, unsigned char out[32]) { SHA256(data, length, out); }

static inline int syncd_hmac_sha256(const void *key, size_t keyLength, const void *data, size_t length, unsigned char out[32]) {
    unsigned int outLength = 32;
    return HMAC(EVP_sha256(), key, (int)keyLength, data, length, out, &outLength) != 0 ? 0 : -1;
}
/// MD5 of `data` (what S3's Content-MD5 and the ETag of a simple upload hold; not used for any security).
static inline int syncd_md5(const void *data, size_t length, unsigned char out[16]) {
    unsigned int outLength = 16;
    return EVP_Digest(data, length, out, &outLength, EVP_md5(), NULL) == 1 ? 0 : -1;
}
#endif
