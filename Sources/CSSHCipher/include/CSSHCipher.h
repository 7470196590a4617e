#ifndef SYNCD_CSSHCIPHER_H
#define SYNCD_CSSHCIPHER_H
/// 1 when AES-CTR keystream batching under libssh2 is in effect in this process (see cipher_batch.c), else 0.
int syncd_cipher_batching(void);
#endif
