// AES-CTR keystream in batches, under libssh2.
//
// libssh2 1.10 (Debian 12's) encrypts and decrypts a packet one cipher block at a time: one EVP_Cipher call per
// 16 bytes. Through OpenSSL 3's provider layer that costs about 90 ns a block on this project's machines, which
// made libcrypto 62% of the client's CPU in a large push (Bench/RESULTS.md), while the same AES-NI code runs
// at gigabytes per second when given whole buffers.
//
// In CTR mode the keystream does not depend on the data, so this process's EVP_Cipher (it preempts libcrypto's
// for libssh2, which calls it through its PLT) asks the real one for 4 KiB of keystream at a time by encrypting
// zeros, and XORs each block libssh2 hands it with the next 16 bytes of that keystream. The counter inside the
// context advances exactly as it would have, just earlier; the stream on the wire is identical.
//
// Scope and safety:
// - Only contexts whose cipher is in CTR mode are touched; every other call (libcurl's TLS, which never uses
//   CTR) goes straight to libcrypto.
// - The keystream lives in the context's app data, which libssh2 does not use, tagged with a magic number and
//   the context's own address. A session's contexts move between threads (set-up, then the pump) but are used by
//   one thread at a time, so the keystream needs no lock; each thread remembers its last two, checked by owner.
// - EVP_CIPHER_CTX_free and the EVP_CipherInit calls drop the keystream, so a freed, reused or rekeyed context
//   never sees stale bytes.
// - A wrong byte would fail the MAC on the far side at once: it cannot go unnoticed.
// - SYNCD_SSH_CIPHER_BATCH=0 in the environment turns all of this off.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "CSSHCipher.h"

#define KEYSTREAM_BYTES 4096
#define KEYSTREAM_MAGIC 0x7379636e64637472ULL

struct keystream {
    uint64_t magic;                 // KEYSTREAM_MAGIC while it belongs to `owner`
    const EVP_CIPHER_CTX *owner;
    size_t used;
    struct keystream *next_free;
    unsigned char bytes[KEYSTREAM_BYTES];
};

typedef int (*cipher_fn)(EVP_CIPHER_CTX *, unsigned char *, const unsigned char *, unsigned int);
typedef void (*free_fn)(EVP_CIPHER_CTX *);
typedef int (*init_fn)(EVP_CIPHER_CTX *, const EVP_CIPHER *, const unsigned char *, const unsigned char *, int);
typedef int (*init_ex_fn)(EVP_CIPHER_CTX *, const EVP_CIPHER *, ENGINE *, const unsigned char *, const unsigned char *, int);

static cipher_fn real_cipher;
static free_fn real_free;
static init_fn real_init;
static init_ex_fn real_init_ex;
static int batching;
static const unsigned char zeros[KEYSTREAM_BYTES];

__attribute__((constructor)) static void syncd_cipher_resolve(void) {
    real_cipher = (cipher_fn)dlsym(RTLD_NEXT, "EVP_Cipher");
    real_free = (free_fn)dlsym(RTLD_NEXT, "EVP_CIPHER_CTX_free");
    real_init = (init_fn)dlsym(RTLD_NEXT, "EVP_CipherInit");
    real_init_ex = (init_ex_fn)dlsym(RTLD_NEXT, "EVP_CipherInit_ex");
    const char *setting = getenv("SYNCD_SSH_CIPHER_BATCH");
    batching = real_cipher && real_free && real_init && real_init_ex && !(setting && strcmp(setting, "0") == 0);
}

int syncd_cipher_batching(void) { return batching; }

// Keystreams are recycled, never freed: a thread's `recent` entry may name one that another thread has since
// released or given to another context, and reading its owner must stay a read of live memory.
static struct keystream *free_keystreams;
static pthread_mutex_t free_lock = PTHREAD_MUTEX_INITIALIZER;

static struct keystream *take_keystream(const EVP_CIPHER_CTX *owner) {
    pthread_mutex_lock(&free_lock);
    struct keystream *k = free_keystreams;
    if (k) free_keystreams = k->next_free;
    pthread_mutex_unlock(&free_lock);
    if (!k && !(k = malloc(sizeof *k))) return NULL;
    k->used = KEYSTREAM_BYTES;
    __atomic_store_n(&k->owner, owner, __ATOMIC_RELEASE);
    __atomic_store_n(&k->magic, KEYSTREAM_MAGIC, __ATOMIC_RELEASE);
    return k;
}

static void release_keystream(struct keystream *k) {
    __atomic_store_n(&k->magic, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&k->owner, NULL, __ATOMIC_RELEASE);
    pthread_mutex_lock(&free_lock);
    k->next_free = free_keystreams;
    free_keystreams = k;
    pthread_mutex_unlock(&free_lock);
}

static int owns(const struct keystream *k, const EVP_CIPHER_CTX *ctx) {
    return k && __atomic_load_n(&k->magic, __ATOMIC_ACQUIRE) == KEYSTREAM_MAGIC && __atomic_load_n(&k->owner, __ATOMIC_ACQUIRE) == ctx;
}

// The keystreams this thread used last (a session has two contexts, one each way): found without a call into
// libcrypto. Only a hint: each is checked against its owner before use.
static __thread struct keystream *recent[2];

static int is_ctr(const EVP_CIPHER_CTX *ctx) {
    const EVP_CIPHER *cipher = EVP_CIPHER_CTX_get0_cipher(ctx);
    return cipher && EVP_CIPHER_get_mode(cipher) == EVP_CIPH_CTR_MODE;
}

/// This context's keystream, if it has one of ours (only asked of CTR contexts, whose app data only we set).
static struct keystream *keystream_of(const EVP_CIPHER_CTX *ctx) {
    struct keystream *k = EVP_CIPHER_CTX_get_app_data(ctx);
    return owns(k, ctx) ? k : NULL;
}

static void drop_keystream(EVP_CIPHER_CTX *ctx) {
    if (!ctx || !is_ctr(ctx)) return;
    struct keystream *k = keystream_of(ctx);
    if (!k) return;
    EVP_CIPHER_CTX_set_app_data(ctx, NULL);
    release_keystream(k);
}

/// Any call the fast path below does not take: another length, a context of someone else's, a keystream to find
/// or to refill, or batching off.
__attribute__((noinline)) static int cipher_slow(EVP_CIPHER_CTX *ctx, unsigned char *out, const unsigned char *in, unsigned int length) {
    if (!real_cipher) real_cipher = (cipher_fn)dlsym(RTLD_NEXT, "EVP_Cipher");
    if (!batching || !ctx || !in || !out) return real_cipher(ctx, out, in, length);
    struct keystream *k = owns(recent[0], ctx) ? recent[0] : owns(recent[1], ctx) ? recent[1] : NULL;
    if (!k) {
        if (!is_ctr(ctx)) return real_cipher(ctx, out, in, length);
        k = keystream_of(ctx);
        if (!k) {
            if (EVP_CIPHER_CTX_get_app_data(ctx) != NULL) return real_cipher(ctx, out, in, length);  // someone else's
            if (!(k = take_keystream(ctx))) return real_cipher(ctx, out, in, length);
            EVP_CIPHER_CTX_set_app_data(ctx, k);
        }
        recent[1] = recent[0];
        recent[0] = k;
    }
    unsigned int done = 0;
    while (done < length) {
        if (k->used == KEYSTREAM_BYTES) {
            // The counter is already past every byte handed out: a failure here cannot be taken back.
            if (real_cipher(ctx, k->bytes, zeros, KEYSTREAM_BYTES) <= 0) return -1;
            k->used = 0;
        }
        size_t n = KEYSTREAM_BYTES - k->used;
        if (n > length - done) n = length - done;
        const unsigned char *key = k->bytes + k->used;
        size_t i = 0;
        for (; i + 8 <= n; i += 8) {
            uint64_t a, b;
            memcpy(&a, in + done + i, 8);
            memcpy(&b, key + i, 8);
            a ^= b;
            memcpy(out + done + i, &a, 8);
        }
        for (; i < n; i++) out[done + i] = in[done + i] ^ key[i];
        k->used += n;
        done += (unsigned int)n;
    }
    return 1;
}

// libssh2's call, 13 million times per 200 MB: one block, on one of this thread's two keystreams, with a block of it
// left. Kept small (the rest is out of line) so that it costs about 2 ns instead of 6; `in` may be `out`.
int EVP_Cipher(EVP_CIPHER_CTX *ctx, unsigned char *out, const unsigned char *in, unsigned int length) {
    struct keystream *k = recent[0];
    if (!owns(k, ctx)) k = recent[1];
    if (length == 16 && in && out && owns(k, ctx) && k->used <= KEYSTREAM_BYTES - 16) {
        const unsigned char *key = k->bytes + k->used;
        uint64_t a, b, c, d;
        memcpy(&a, in, 8);
        memcpy(&b, in + 8, 8);
        memcpy(&c, key, 8);
        memcpy(&d, key + 8, 8);
        a ^= c;
        b ^= d;
        memcpy(out, &a, 8);
        memcpy(out + 8, &b, 8);
        k->used += 16;
        return 1;
    }
    return cipher_slow(ctx, out, in, length);
}

void EVP_CIPHER_CTX_free(EVP_CIPHER_CTX *ctx) {
    if (!real_free) real_free = (free_fn)dlsym(RTLD_NEXT, "EVP_CIPHER_CTX_free");
    drop_keystream(ctx);
    real_free(ctx);
}

int EVP_CipherInit(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *cipher, const unsigned char *key, const unsigned char *iv, int enc) {
    if (!real_init) real_init = (init_fn)dlsym(RTLD_NEXT, "EVP_CipherInit");
    drop_keystream(ctx);
    return real_init(ctx, cipher, key, iv, enc);
}

int EVP_CipherInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *cipher, ENGINE *engine, const unsigned char *key,
                      const unsigned char *iv, int enc) {
    if (!real_init_ex) real_init_ex = (init_ex_fn)dlsym(RTLD_NEXT, "EVP_CipherInit_ex");
    drop_keystream(ctx);
    return real_init_ex(ctx, cipher, engine, key, iv, enc);
}
