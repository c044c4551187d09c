// LD_PRELOAD shim for tapbridge's allocation test: counts malloc/calloc/realloc calls of the
// whole process and prints "ALLOCS n" on stderr at exit. Built by the test with
// `cc -shared -fPIC -O2 -o malloc_count.so malloc_count.c -ldl`.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

static atomic_long count;
static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static void (*real_free)(void *);
// dlsym itself may calloc before real_calloc is known: serve that from a static buffer.
static char bootstrap[4096];
static size_t bootstrap_used;

void *malloc(size_t size) {
    if (!real_malloc) real_malloc = dlsym(RTLD_NEXT, "malloc");
    count++;
    return real_malloc(size);
}

void *calloc(size_t n, size_t size) {
    if (!real_calloc) {
        void *p = bootstrap + bootstrap_used;
        bootstrap_used += (n * size + 15) & ~(size_t)15;
        real_calloc = dlsym(RTLD_NEXT, "calloc");
        return p;
    }
    count++;
    return real_calloc(n, size);
}

void *realloc(void *p, size_t size) {
    if (!real_realloc) real_realloc = dlsym(RTLD_NEXT, "realloc");
    count++;
    return real_realloc(p, size);
}

void free(void *p) {
    if ((char *)p >= bootstrap && (char *)p < bootstrap + sizeof(bootstrap)) return;
    if (!real_free) real_free = dlsym(RTLD_NEXT, "free");
    real_free(p);
}

__attribute__((destructor)) static void report(void) { fprintf(stderr, "ALLOCS %ld\n", (long)count); }
