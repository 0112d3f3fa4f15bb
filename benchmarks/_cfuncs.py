# The C functions the runtime suites call, as a small cffi extension module.
#
#   noop(x)                     returns x: the cheapest call cffi can make
#                               with one argument (the floor of every path)
#   spin_us(us)                 busy-waits ~us microseconds on CLOCK_MONOTONIC:
#                               a short call that holds a core, as real work does
#   block_us(us)                sleeps us microseconds (nanosleep): a call that
#                               blocks without using a core
#   block_and_stamp(us, out)    sleeps like block_us, then writes the
#                               CLOCK_MONOTONIC time in ns into *out right
#                               before it returns: the instant a callout
#                               "comes back", stamped where it happens
#                               (time.monotonic_ns() reads the same clock)
#   ticker_start(hz)            starts a thread that does nothing but wake
#                               hz times a second on absolute deadlines
#                               (clock_nanosleep, timer slack 1 us): the
#                               heartbeat's wake-ups with none of its work
#   ticker_stop()               stops it; returns its CPU time over its wall
#                               time: what bare ticking costs on this machine
#
# Each also has a generated wrapper NAME_threaded (vmown.threaded_wrappers):
# the same call made as a threaded callout from C (disown, call, own) once the
# module is bound with vmown.bind_threaded -- which load() does -- and the
# calling thread is bound to a VM (the runtime binds its workers).
#
# Built with cffi's out-of-line API mode (FFI().compile) into
# benchmarks/.build/ (gitignored).  The module's name carries a hash of
# everything that goes into it (the C source, the generated wrappers, the cffi
# version), so a stale build is never imported and a cached one is reused as
# is.  The compiler works in a temporary directory and the finished .so is
# renamed into place, so an interrupted build leaves nothing half-written
# under the final name.

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import os
import pathlib
import sys
import tempfile
from typing import Any

import cffi

import vmown

HERE = pathlib.Path(__file__).resolve().parent
BUILD = HERE / ".build"

DECLARATIONS = """
int noop(int x);
int spin_us(int us);
int block_us(int us);
int block_and_stamp(int us, int64_t *out);
int ticker_start(int hz);
double ticker_stop(void);
"""

SOURCE = r"""
#include <stdint.h>
#include <time.h>
#include <errno.h>
#include <pthread.h>
#include <sys/prctl.h>

static int64_t bench_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int noop(int x) { return x; }

int spin_us(int us) {
    int64_t end = bench_now_ns() + (int64_t)us * 1000;
    while (bench_now_ns() < end) continue;
    return us;
}

int block_us(int us) {
    struct timespec ts = {.tv_sec = us / 1000000, .tv_nsec = (long)(us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) continue;
    return us;
}

int block_and_stamp(int us, int64_t *out) {
    block_us(us);
    *out = bench_now_ns();
    return us;
}

static pthread_t ticker;
static volatile int ticker_stopping, ticker_hz;
static double ticker_fraction;

static int64_t thread_cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void *ticker_main(void *arg) {
    (void)arg;
    prctl(PR_SET_TIMERSLACK, 1000UL);
    int64_t period = 1000000000 / ticker_hz, wall0 = bench_now_ns(), cpu0 = thread_cpu_ns();
    int64_t next = wall0 + period;
    while (!ticker_stopping) {
        struct timespec ts = {.tv_sec = next / 1000000000, .tv_nsec = next % 1000000000};
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
        int64_t now = bench_now_ns();
        next += period;
        if (next <= now) next = now + period;  /* late: skip, as the heartbeat */
    }
    ticker_fraction = (double)(thread_cpu_ns() - cpu0) / (double)(bench_now_ns() - wall0);
    return NULL;
}

int ticker_start(int hz) {
    ticker_stopping = 0;
    ticker_hz = hz;
    return pthread_create(&ticker, NULL, ticker_main, NULL);
}

double ticker_stop(void) {
    ticker_stopping = 1;
    pthread_join(ticker, NULL);
    return ticker_fraction;
}
"""

_loaded: Any = None


def _module_name(wrapper_cdef: str, wrapper_source: str) -> str:
    text = "\0".join([DECLARATIONS, SOURCE, wrapper_cdef, wrapper_source, cffi.__version__])
    return "_bench_cfuncs_" + hashlib.sha256(text.encode()).hexdigest()[:12]


def load() -> tuple[Any, Any]:
    """(ffi, lib) of the benchmark functions, built if need be, wrappers bound."""
    global _loaded
    if _loaded is not None:
        return _loaded
    wrapper_cdef, wrapper_source = vmown.threaded_wrappers(DECLARATIONS)
    name = _module_name(wrapper_cdef, wrapper_source)
    BUILD.mkdir(exist_ok=True)
    # Built per interpreter: a module another Python version built beside it
    # (its own ABI suffix) does not count.
    if not any((BUILD / f"{name}{suffix}").exists() for suffix in importlib.machinery.EXTENSION_SUFFIXES):
        builder = cffi.FFI()
        builder.cdef(DECLARATIONS + wrapper_cdef)
        builder.set_source(name, SOURCE + wrapper_source, extra_compile_args=["-O2", "-std=gnu11"])
        with tempfile.TemporaryDirectory(dir=BUILD) as tmp:
            built = pathlib.Path(builder.compile(tmpdir=tmp, verbose=False))
            os.replace(built, BUILD / built.name)
    if str(BUILD) not in sys.path:
        sys.path.insert(0, str(BUILD))
    module = importlib.import_module(name)
    vmown.bind_threaded(module.lib)
    _loaded = (module.ffi, module.lib)
    return _loaded


if __name__ == "__main__":
    ffi, lib = load()
    out = ffi.new("int64_t *")
    print(lib.noop(7), lib.spin_us(5), lib.block_us(100), lib.block_and_stamp(100, out), out[0])
