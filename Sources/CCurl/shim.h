// libcurl, loaded at run time (dlopen) rather than linked: the agent must run on a host with nothing beyond libc
// and zlib unless a project uses a store, and only then needs libcurl.so.4. Only curl's headers are needed to build.
// curl_easy_setopt and curl_easy_getinfo are variadic, which Swift cannot call: typed wrappers below call them.
#ifndef SYNCD_CCURL_SHIM_H
#define SYNCD_CCURL_SHIM_H
#include <curl/curl.h>
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

typedef struct {
    void *library;
    CURLcode (*global_init)(long flags);
    CURL *(*easy_init)(void);
    CURLcode (*easy_setopt)(CURL *handle, CURLoption option, ...);
    CURLcode (*easy_perform)(CURL *handle);
    CURLcode (*easy_getinfo)(CURL *handle, CURLINFO info, ...);
    void (*easy_reset)(CURL *handle);
    void (*easy_cleanup)(CURL *handle);
    const char *(*easy_strerror)(CURLcode code);
    struct curl_slist *(*slist_append)(struct curl_slist *list, const char *text);
    void (*slist_free_all)(struct curl_slist *list);
    curl_version_info_data *(*version_info)(CURLversion age);
} syncd_curl_api;

/// Loads libcurl.so.4 and resolves what syncd uses; 0 on success, else -1 with the reason in `error`.
static inline int syncd_curl_load(syncd_curl_api *api, char *error, size_t length) {
    memset(api, 0, sizeof *api);
    api->library = dlopen("libcurl.so.4", RTLD_NOW | RTLD_LOCAL);
    if (!api->library) {
        snprintf(error, length, "%s", dlerror());
        return -1;
    }
#define SYNCD_CURL_SYMBOL(field, name) \
    *(void **)(&api->field) = dlsym(api->library, name); \
    if (!api->field) { snprintf(error, length, "libcurl.so.4 has no %s", name); return -1; }
    SYNCD_CURL_SYMBOL(global_init, "curl_global_init")
    SYNCD_CURL_SYMBOL(easy_init, "curl_easy_init")
    SYNCD_CURL_SYMBOL(easy_setopt, "curl_easy_setopt")
    SYNCD_CURL_SYMBOL(easy_perform, "curl_easy_perform")
    SYNCD_CURL_SYMBOL(easy_getinfo, "curl_easy_getinfo")
    SYNCD_CURL_SYMBOL(easy_reset, "curl_easy_reset")
    SYNCD_CURL_SYMBOL(easy_cleanup, "curl_easy_cleanup")
    SYNCD_CURL_SYMBOL(easy_strerror, "curl_easy_strerror")
    SYNCD_CURL_SYMBOL(slist_append, "curl_slist_append")
    SYNCD_CURL_SYMBOL(slist_free_all, "curl_slist_free_all")
    SYNCD_CURL_SYMBOL(version_info, "curl_version_info")
#undef SYNCD_CURL_SYMBOL
    return api->global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : (snprintf(error, length, "curl_global_init failed"), -1);
}

static inline CURLcode syncd_curl_setopt_long(const syncd_curl_api *api, CURL *h, CURLoption option, long value) {
    return api->easy_setopt(h, option, value);
}
static inline CURLcode syncd_curl_setopt_offset(const syncd_curl_api *api, CURL *h, CURLoption option, curl_off_t value) {
    return api->easy_setopt(h, option, value);
}
static inline CURLcode syncd_curl_setopt_pointer(const syncd_curl_api *api, CURL *h, CURLoption option, const void *value) {
    return api->easy_setopt(h, option, value);
}
typedef size_t (*syncd_curl_data_callback)(char *data, size_t size, size_t count, void *context);
static inline CURLcode syncd_curl_setopt_callback(const syncd_curl_api *api, CURL *h, CURLoption option, syncd_curl_data_callback value) {
    return api->easy_setopt(h, option, value);
}
static inline CURLcode syncd_curl_getinfo_long(const syncd_curl_api *api, CURL *h, CURLINFO info, long *out) {
    return api->easy_getinfo(h, info, out);
}
static inline const char *syncd_curl_version(const syncd_curl_api *api) { return api->version_info(CURLVERSION_NOW)->version; }
#endif
