// Typed wrappers for libcurl's variadic setopt/getinfo, which Swift cannot call.
#ifndef CKPTFS_CCURL_SHIM_H
#define CKPTFS_CCURL_SHIM_H

#include <curl/curl.h>

static inline CURLcode ckptfs_curl_setopt_long(CURL *h, CURLoption o, long v) {
    return curl_easy_setopt(h, o, v);
}
static inline CURLcode ckptfs_curl_setopt_string(CURL *h, CURLoption o, const char *v) {
    return curl_easy_setopt(h, o, v);
}
static inline CURLcode ckptfs_curl_setopt_pointer(CURL *h, CURLoption o, void *v) {
    return curl_easy_setopt(h, o, v);
}
static inline CURLcode ckptfs_curl_setopt_offset(CURL *h, CURLoption o, curl_off_t v) {
    return curl_easy_setopt(h, o, v);
}
static inline CURLcode ckptfs_curl_setopt_write_callback(CURL *h, CURLoption o, curl_write_callback v) {
    return curl_easy_setopt(h, o, v);
}
static inline CURLcode ckptfs_curl_setopt_read_callback(CURL *h, CURLoption o, curl_read_callback v) {
    return curl_easy_setopt(h, o, v);
}
static inline CURLcode ckptfs_curl_setopt_seek_callback(CURL *h, CURLoption o, curl_seek_callback v) {
    return curl_easy_setopt(h, o, v);
}
static inline CURLcode ckptfs_curl_getinfo_long(CURL *h, CURLINFO i, long *v) {
    return curl_easy_getinfo(h, i, v);
}
static inline CURLcode ckptfs_curl_getinfo_offset(CURL *h, CURLINFO i, curl_off_t *v) {
    return curl_easy_getinfo(h, i, v);
}

#endif
