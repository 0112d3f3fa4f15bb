/* callbacks.c -- a C library for tests/test_callback.py: threads of its
 * own that call a Python callback (cffi), as C libraries with worker threads
 * do.  Built by the test with the system compiler; loaded with ffi.dlopen. */
#include <pthread.h>
#include <stdint.h>

typedef void (*tick_fn)(int thread, int i);

struct job {
    tick_fn fn;
    int thread, count;
};

static void *run_job(void *arg) {
    struct job *job = arg;
    for (int i = 0; i < job->count; i++) job->fn(job->thread, i);
    return NULL;
}

/* Start `threads` pthreads (at most 64) that each call fn(thread, i) for i
 * in 0..count-1; join them.  Returns 0, or -1 if a thread could not start. */
int call_from_threads(tick_fn fn, int threads, int count) {
    pthread_t ids[64];
    struct job jobs[64];
    int started = 0, rc = 0;
    if (threads > 64) threads = 64;
    for (; started < threads; started++) {
        jobs[started] = (struct job){fn, started, count};
        if (pthread_create(&ids[started], NULL, run_job, &jobs[started]) != 0) {
            rc = -1;
            break;
        }
    }
    for (int i = 0; i < started; i++) pthread_join(ids[i], NULL);
    return rc;
}

/* Call fn(0, i) `count` times on the calling thread. */
void call_here(tick_fn fn, int count) {
    for (int i = 0; i < count; i++) fn(0, i);
}
