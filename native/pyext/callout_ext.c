/* callout_ext.c -- vmown.callout and vmown.threaded as C callables.
 *
 * A callout is: check the arguments, disown, call, own again.  Written in
 * Python it costs two cffi calls (~45 ns each) and a Python frame around the
 * call it protects, ~5x a plain cffi call.  Here it is one vectorcall of a
 * builtin around the user's call; disown and own are direct calls into the
 * core, ~1.5x a plain call.
 *
 * One copy of the core per process: this module does not link the core.  It
 * gets vmown_callout_begin_eager / _try_end / _end through the table of
 * vmown_callout_api() (the table the generated C wrappers use), passed in by
 * address from vmown/_callout.py through init().
 *
 * The sequence and its windows:
 *   1. check every argument; pin buffers (a buffer export held until 5: a
 *      resize meanwhile raises BufferError); refuse what C must not get
 *      (vmown/_buffers.py) -- all before anything changes;
 *   2. token = begin(tag): disown if this thread is bound and owns the VM;
 *   3. call fn (a cffi function releases the GIL around the C function);
 *   4. own again: try_end (one CAS, GIL held); if another thread took the VM
 *      meanwhile, end() with the GIL released: queue, sleep on our slot's
 *      semaphore until handed the VM;
 *   5. release the pins.
 * No Python code runs between 2 and 3 nor after 3 until 4 is done: CPython
 * runs signal handlers only between bytecodes, so KeyboardInterrupt cannot
 * land with the VM disowned and the token lost (the Python version had such a
 * window after its begin call and needed the SIGINT handler to defer there).
 * An exception raised by fn stays set across 4 (it lives in the thread state,
 * which the GIL release does not touch).
 *
 * errno.  cffi saves errno in its per-thread slot right after the C function
 * returns (before 4); ffi.errno reads that slot, and nothing here writes it.
 *
 * The blocking entry.  cffi takes the GIL back before step 4 can ask for the
 * VM.  For a short call nobody waits for, that costs nothing; for a call
 * that blocked, the thread comes back while another thread owns the VM and
 * runs Python, so it first takes the GIL from that owner (at the owner's
 * next call into C), then finds the VM taken and waits for it -- and the
 * owner, back from its own short call, waits for the GIL in turn.  The two
 * pass the GIL and the VM back and forth (docs/design-log.md, "The blocking
 * entry").  So a Threaded wrapper of a cffi function has a second way in: a
 * libffi closure with the function's own signature, wrapped by cffi as a
 * function pointer of the same C type (same argument conversions).  Its
 * handler calls the function (ffi_call, the closure's own cif) and then does
 * step 4 itself, GIL released, as the generated C wrappers do: the thread
 * owns the VM before it asks for the GIL.  The entry costs a closure, an
 * ffi_call and cffi's generic call path more than a direct call, so it is
 * taken only when begin's token says the VM is wanted during the call
 * (VMOWN_CALLOUT_WANTED: the function is known to block, and the disown
 * handed the VM over, or a thread was queued and got a soft grant, which
 * the caller then takes back without first waiting for the GIL).  The
 * token travels to the handler in a thread-local (entry_token); the handler
 * takes it before the call, and the caller ends the callout itself if it
 * is still set (cffi refused an argument before the call).
 *
 * What passes as it is (the rules of vmown/_buffers.py, where they are
 * explained): for a cffi function, through callout() or threaded(), only
 * pointer parameters are checked: None and cdata pass, bytes pass for a
 * const pointer, other objects go through pin_pointer() (Python), which
 * returns a cdata pinning the buffer (writable unless the parameter is
 * const), or raises.  callout() learns a function's parameters once, from
 * c_parameters() (Python), and keeps them in `known` keyed by the function.
 * For a Python callable every argument passes; buffers among them are
 * pinned.  The messages of refusals are made by the Python helpers, so they
 * are written once.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <ffi.h>

#include "vmown.h"  /* the table's type only: nothing of the core is linked */

static uint32_t (*core_begin)(uint64_t);
static void (*core_end)(uint32_t);
static int (*core_try_end)(uint32_t);
static int (*core_error)(void);

static PyTypeObject *cdata_type;  /* _cffi_backend._CDataBase */
static PyObject *pin_pointer_fn;  /* _buffers.pin_pointer(fn, arg, ctype, n, const) -> cdata */
static PyObject *c_parameters_fn; /* _buffers.c_parameters(fn) -> tuple or None */
static PyObject *known;           /* dict: C callable -> c_parameters(fn), for callout() */
static PyObject *error_fn;        /* _errors.error(code, context) -> the exception for a VMOWN_E* code */

/* `known` is cleared when it grows past this (functions made on the fly). */
enum { KNOWN_MAX = 4096 };

enum { SMALL = 8 };

/* ---- per-function figures (vmown.callout_stats) ----
 *
 * Each Threaded wrapper counts its own callouts; callout()'s targets are
 * counted in a small table keyed by the function object (probing a few
 * entries; a target that finds no room counts in the shared entry `other`).
 * Only calls made from a VM count (begin gave a token).  Every field is
 * written with the GIL held (after the call, cffi has taken it back; after
 * end, Py_END_ALLOW_THREADS has), so plain fields suffice.  Counting is
 * free: `calls` is one increment, `handed_over` is counted on the slow path
 * only (the call came back to a VM that another thread had taken, and waited
 * for it).  Timing is not: two CLOCK_MONOTONIC reads per callout (~30-150
 * ns, against a callout's ~90), so it is on only while `timing` is set
 * (set_timing: vmown.run(..., callout_times=True) or monitor=). */
typedef struct {
    unsigned long long calls, handed_over, out_ns, longest_ns;
    unsigned long long entered;  /* came back through the blocking entry (Threaded._entered) */
} figures;

static int timing;

enum { TARGETS = 256, PROBES = 8 };
static struct {
    PyObject *fn;  /* a strong reference: at most TARGETS functions kept alive */
    figures f;
} targets[TARGETS];
static figures other;

static figures *target_figures(PyObject *fn) {
    unsigned i = (unsigned)(((uint64_t)(uintptr_t)fn * 0x9E3779B97F4A7C15ull) >> 56);
    for (unsigned k = 0; k < PROBES; k++, i = (i + 1) % TARGETS) {
        if (targets[i].fn == fn) return &targets[i].f;
        if (!targets[i].fn) {
            targets[i].fn = Py_NewRef(fn);
            return &targets[i].f;
        }
    }
    return &other;
}

static inline uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* ---- the call itself (steps 2-4) ---- */

/* The blocking entry's handoff (see the top): the token the handler ends,
 * and whether it had to wait for the VM. */
static _Thread_local uint32_t entry_token;
static _Thread_local int entry_waited;

/* The closure's handler: the call, then step 4 without the GIL. */
static void entry_run(ffi_cif *cif, void *ret, void **args, void *fn) {
    uint32_t token = entry_token;
    entry_token = 0;  /* taken before the call: a callout nested in it has its own */
    ffi_call(cif, FFI_FN(fn), ret, args);
    if (!token) return;
    entry_waited = !core_try_end(token);
    if (entry_waited) core_end(token);
}

/* A blocking entry: the closure, its cif and argument types, and the
 * function it calls.  Owned by a capsule (make_entry), which the wrapper
 * keeps alive with the cffi function pointer made from `code`. */
typedef struct {
    ffi_closure *closure;
    void *code;
    ffi_cif cif;
    ffi_type *types[];
} entry_data;

static void entry_free(PyObject *capsule) {
    entry_data *e = PyCapsule_GetPointer(capsule, "vmown._callout_ext.entry");
    if (!e) return;
    if (e->closure) ffi_closure_free(e->closure);
    PyMem_RawFree(e);
}

/* libffi's type for each letter of a signature (vmown/_callout.py,
 * _type_letter, writes them: one for the result, then the parameters). */
static ffi_type *entry_type(char letter) {
    switch (letter) {
        case 'v': return &ffi_type_void;
        case 'p': return &ffi_type_pointer;
        case 'f': return &ffi_type_float;
        case 'd': return &ffi_type_double;
        case 'b': return &ffi_type_sint8;
        case 'B': return &ffi_type_uint8;
        case 'h': return &ffi_type_sint16;
        case 'H': return &ffi_type_uint16;
        case 'i': return &ffi_type_sint32;
        case 'I': return &ffi_type_uint32;
        case 'q': return &ffi_type_sint64;
        case 'Q': return &ffi_type_uint64;
        default: return NULL;
    }
}

static PyObject *make_entry(PyObject *module, PyObject *args) {
    unsigned long long address;
    const char *signature;
    Py_ssize_t length;
    if (!PyArg_ParseTuple(args, "Ks#:make_entry", &address, &signature, &length)) return NULL;
    if (!address || length < 1 || length > 256) {
        PyErr_SetString(PyExc_ValueError, "make_entry needs a function address and a signature of 1-256 letters");
        return NULL;
    }
    unsigned nparams = (unsigned)length - 1;
    entry_data *e = PyMem_RawCalloc(1, sizeof *e + sizeof(ffi_type *) * (nparams ? nparams : 1));
    if (!e) return PyErr_NoMemory();
    ffi_type *result = entry_type(signature[0]);
    for (unsigned i = 0; result && i < nparams; i++)
        if (!(e->types[i] = entry_type(signature[i + 1])) || e->types[i] == &ffi_type_void) result = NULL;
    const char *failed = NULL;
    if (!result)
        failed = "a signature letter is not one of vpfdbBhHiIqQ";
    else if (ffi_prep_cif(&e->cif, FFI_DEFAULT_ABI, nparams, result, e->types) != FFI_OK)
        failed = "libffi refused the signature";
    else if (!(e->closure = ffi_closure_alloc(sizeof(ffi_closure), &e->code)))
        failed = "libffi could not allocate a closure";
    else if (ffi_prep_closure_loc(e->closure, &e->cif, entry_run, (void *)(uintptr_t)address, e->code) != FFI_OK)
        failed = "libffi could not prepare the closure";
    if (failed) {
        if (e->closure) ffi_closure_free(e->closure);
        PyMem_RawFree(e);
        PyErr_SetString(PyExc_ValueError, failed);
        return NULL;
    }
    PyObject *capsule = PyCapsule_New(e, "vmown._callout_ext.entry", entry_free);
    if (!capsule) {
        ffi_closure_free(e->closure);
        PyMem_RawFree(e);
        return NULL;
    }
    return Py_BuildValue("(NK)", capsule, (unsigned long long)(uintptr_t)e->code);
}

/* The end could not own the VM again (the block is broken): the call's
 * result, or the exception it raised, is dropped and the error raised, so
 * that no VM code runs on. */
static PyObject *not_owning(PyObject *result, int error) {
    Py_XDECREF(result);
#if PY_VERSION_HEX >= 0x030C0000
    Py_XDECREF(PyErr_GetRaisedException());
#else
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
#endif
    PyObject *exc = PyObject_CallFunction(error_fn, "is", error, "owning the VM again after a callout");
    if (exc) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

/* f: the wrapper's figures; NULL for callout(): fn's entry of `targets`.
 * entry: the wrapper's blocking entry (a cffi function pointer of fn's
 * type), or NULL. */
static PyObject *call_disowned(PyObject *fn, PyObject *entry, uint64_t tag, figures *f, PyObject *const *args,
                               size_t nargs, PyObject *kwnames) {
    uint32_t token = core_begin(tag);
    if (!token) return PyObject_Vectorcall(fn, args, nargs, kwnames);
    if (!f) f = target_figures(fn);  /* before the call: a watchdog names a target still out */
    uint64_t start_ns = timing ? now_ns() : 0;
    PyObject *result;
    int ended = 0, waited = 0;  /* ended: by the entry's handler, which ran */
    if (entry && (token & VMOWN_CALLOUT_WANTED)) {
        entry_token = token;
        result = PyObject_Vectorcall(entry, args, nargs, kwnames);
        ended = entry_token == 0;
        entry_token = 0;  /* still set if cffi refused an argument before the call */
        if (ended) {
            waited = entry_waited;
            f->entered++;
        }
    } else {
        result = PyObject_Vectorcall(fn, args, nargs, kwnames);
    }
    if (!ended && (waited = !core_try_end(token))) {
        Py_BEGIN_ALLOW_THREADS
        core_end(token);
        Py_END_ALLOW_THREADS
    }
    f->calls++;
    f->handed_over += (unsigned)waited;
    if (start_ns) {
        uint64_t out_ns = now_ns() - start_ns;
        f->out_ns += out_ns;
        if (out_ns > f->longest_ns) f->longest_ns = out_ns;
    }
    int error;
    if (waited && (error = core_error()) != 0) return not_owning(result, error);
    return result;
}

static int not_ready(void) {
    if (core_begin) return 0;
    PyErr_SetString(PyExc_RuntimeError, "vmown._callout_ext is not initialised (import vmown first)");
    return -1;
}

/* ---- callout(): the generic rules ---- */

/* Immutable, or cdata: passed as it is. */
static inline int as_is(PyObject *arg) {
    PyTypeObject *t = Py_TYPE(arg);
    return arg == Py_None || t == &PyLong_Type || t == &PyFloat_Type || t == &PyBool_Type ||
           t == &PyUnicode_Type || t == &PyBytes_Type || t == &PyComplex_Type ||
           PyObject_TypeCheck(arg, cdata_type) || PyLong_Check(arg) || PyFloat_Check(arg) ||
           PyUnicode_Check(arg) || PyBytes_Check(arg);
}

/* Pins held for one call: on the stack for the usual few, else on the heap. */
typedef struct {
    Py_buffer small[SMALL];
    Py_buffer *views;
    Py_ssize_t count, cap;
} pins;

static void pins_release(pins *p) {
    for (Py_ssize_t i = 0; i < p->count; i++) PyBuffer_Release(&p->views[i]);
    if (p->views != p->small) PyMem_Free(p->views);
}

/* Pin one argument if it is a buffer; 0, or -1 with the error set. */
static int pin(pins *p, PyObject *arg) {
    if (as_is(arg) || !PyObject_CheckBuffer(arg)) return 0;
    if (p->count == p->cap) {
        Py_ssize_t cap = p->cap * 2;
        Py_buffer *views = PyMem_Malloc(sizeof *views * (size_t)cap);
        if (!views) {
            PyErr_NoMemory();
            return -1;
        }
        memcpy(views, p->views, sizeof *views * (size_t)p->count);
        if (p->views != p->small) PyMem_Free(p->views);
        p->views = views;
        p->cap = cap;
    }
    /* Any layout will do (the call gets the object itself, not the view):
     * the export is held only to pin.  RO: a writable exporter accepts it. */
    if (PyObject_GetBuffer(arg, &p->views[p->count], PyBUF_FULL_RO) < 0) return -1;
    p->count++;
    return 0;
}

static PyObject *generic_call(PyObject *fn, uint64_t tag, figures *f, PyObject *const *args, size_t nargs,
                              PyObject *kwnames) {
    Py_ssize_t n = (Py_ssize_t)nargs, nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    Py_ssize_t i = 0;
    while (i < n + nkw && as_is(args[i])) i++;
    if (i == n + nkw) return call_disowned(fn, NULL, tag, f, args, nargs, kwnames);  /* nothing to pin */
    pins p = {.views = p.small, .cap = SMALL};
    for (; i < n + nkw; i++) {
        if (pin(&p, args[i]) < 0) {
            pins_release(&p);
            return NULL;
        }
    }
    PyObject *result = call_disowned(fn, NULL, tag, f, args, nargs, kwnames);
    pins_release(&p);
    return result;
}

static PyObject *c_call(PyObject *fn, PyObject *entry, uint64_t tag, figures *f, PyObject *params,
                        PyObject *const *args, size_t nargs);

/* callout(fn, ...) of a cffi function: its parameters, from `known`.  A
 * borrowed tuple, Py_None (not a cffi function) or NULL with the error set. */
static PyObject *c_parameters(PyObject *fn) {
    PyObject *params = PyDict_GetItemWithError(known, fn);
    if (params || PyErr_Occurred()) return params;
    params = PyObject_CallOneArg(c_parameters_fn, fn);
    if (!params) return NULL;
    if (PyDict_GET_SIZE(known) >= KNOWN_MAX) PyDict_Clear(known);
    int rc = PyDict_SetItem(known, fn, params);
    Py_DECREF(params);  /* `known` holds it */
    return rc < 0 ? NULL : params;
}

static PyObject *callout(PyObject *module, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "callout() needs the function to call");
        return NULL;
    }
    if (not_ready() < 0) return NULL;
    PyObject *fn = args[0];
    /* Tagged by the function: the core keeps per-tag hints (callout.c). */
    uint64_t tag = (uint64_t)(uintptr_t)fn;
    if (PyObject_TypeCheck(fn, cdata_type) || PyCFunction_Check(fn)) {
        PyObject *params = c_parameters(fn);
        if (!params) return NULL;
        if (params != Py_None) {
            if ((kwnames && PyTuple_GET_SIZE(kwnames)) || PyTuple_GET_SIZE(params) != nargs - 1)
                return PyObject_Vectorcall(fn, args + 1, (size_t)(nargs - 1), kwnames);  /* cffi refuses */
            return c_call(fn, NULL, tag, NULL, params, args + 1, (size_t)(nargs - 1));
        }
    }
    return generic_call(fn, tag, NULL, args + 1, (size_t)(nargs - 1), kwnames);
}

/* ---- threaded(): a callable wrapping one function ---- */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *fn;
    PyObject *dict;        /* __name__, __doc__, __wrapped__ ... */
    PyObject *weakrefs;    /* observers list wrappers in a WeakSet */
    figures f;
    PyObject *ctypes;      /* tuple: (ctype, const) of each pointer parameter, else None */
    PyObject *entry;       /* the blocking entry: a cffi function pointer of fn's type, or NULL */
    PyObject *entry_keep;  /* what keeps the entry's closure alive (make_entry's capsule) */
    Py_ssize_t nparams;    /* -1: any arguments, the rules of callout() */
    uint64_t tag;
    int pointers;          /* whether any parameter is a pointer */
} threaded_object;

/* A cffi function with a fixed parameter list (`params`, one entry per
 * argument): the pointer parameters are checked and pinned. */
static PyObject *c_call(PyObject *fn, PyObject *entry, uint64_t tag, figures *f, PyObject *params,
                        PyObject *const *args, size_t nargs) {
    PyObject *small[SMALL], **stack = small;
    if (nargs > SMALL && !(stack = PyMem_Malloc(sizeof *stack * nargs))) return PyErr_NoMemory();
    size_t i;
    PyObject *result = NULL;
    for (i = 0; i < nargs; i++) {
        PyObject *arg = args[i], *param = PyTuple_GET_ITEM(params, i);
        if (param == Py_None || arg == Py_None || PyObject_TypeCheck(arg, cdata_type)) {
            stack[i] = Py_NewRef(arg);
            continue;
        }
        PyObject *ctype = PyTuple_GET_ITEM(param, 0), *is_const = PyTuple_GET_ITEM(param, 1);
        if (is_const == Py_True && PyBytes_CheckExact(arg)) {  /* read-only, for a const pointer */
            stack[i] = Py_NewRef(arg);
            continue;
        }
        stack[i] = PyObject_CallFunction(pin_pointer_fn, "OOOnO", fn, arg, ctype, (Py_ssize_t)i + 1, is_const);
        if (!stack[i]) goto done;
    }
    result = call_disowned(fn, entry, tag, f, stack, nargs, NULL);
done:
    while (i > 0) Py_DECREF(stack[--i]);  /* a pinning cdata releases its export here */
    if (stack != small) PyMem_Free(stack);
    return result;
}

static PyObject *threaded_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    threaded_object *self = (threaded_object *)callable;
    size_t nargs = PyVectorcall_NARGS(nargsf);
    if (not_ready() < 0) return NULL;
    if (self->nparams < 0) return generic_call(self->fn, self->tag, &self->f, args, nargs, kwnames);
    if (kwnames && PyTuple_GET_SIZE(kwnames)) {
        PyErr_Format(PyExc_TypeError, "%R takes no keyword arguments", self->fn);
        return NULL;
    }
    if ((Py_ssize_t)nargs != self->nparams) {
        PyErr_Format(PyExc_TypeError, "%R takes %zd argument%s (%zd given)", self->fn, self->nparams,
                     self->nparams == 1 ? "" : "s", (Py_ssize_t)nargs);
        return NULL;
    }
    if (!self->pointers) return call_disowned(self->fn, self->entry, self->tag, &self->f, args, nargs, NULL);
    return c_call(self->fn, self->entry, self->tag, &self->f, self->ctypes, args, nargs);
}

static PyObject *threaded_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"fn", "tag", "ctypes", "entry", "entry_keep", NULL};
    PyObject *fn, *ctypes = Py_None, *entry = Py_None, *entry_keep = Py_None;
    unsigned long long tag;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OK|OOO:Threaded", names, &fn, &tag, &ctypes, &entry, &entry_keep))
        return NULL;
    if (ctypes != Py_None && !PyTuple_Check(ctypes)) {
        PyErr_SetString(PyExc_TypeError, "ctypes must be a tuple (one entry per parameter) or None");
        return NULL;
    }
    if (entry != Py_None && (ctypes == Py_None || !PyObject_TypeCheck(entry, cdata_type))) {
        PyErr_SetString(PyExc_TypeError, "entry must be a cffi function pointer, for a cffi function");
        return NULL;
    }
    threaded_object *self = (threaded_object *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    self->vectorcall = threaded_vectorcall;
    self->fn = Py_NewRef(fn);
    self->ctypes = Py_NewRef(ctypes);
    if (entry != Py_None) {
        self->entry = Py_NewRef(entry);
        self->entry_keep = Py_NewRef(entry_keep);
    }
    self->tag = tag;
    self->nparams = ctypes == Py_None ? -1 : PyTuple_GET_SIZE(ctypes);
    for (Py_ssize_t i = 0; i < self->nparams; i++)
        if (PyTuple_GET_ITEM(ctypes, i) != Py_None) self->pointers = 1;
    return (PyObject *)self;
}

static int threaded_traverse(threaded_object *self, visitproc visit, void *arg) {
    Py_VISIT(self->fn);
    Py_VISIT(self->ctypes);
    Py_VISIT(self->entry);
    Py_VISIT(self->entry_keep);
    Py_VISIT(self->dict);
    return 0;
}

static int threaded_clear(threaded_object *self) {
    Py_CLEAR(self->fn);
    Py_CLEAR(self->ctypes);
    Py_CLEAR(self->entry);
    Py_CLEAR(self->entry_keep);
    Py_CLEAR(self->dict);
    return 0;
}

static void threaded_dealloc(threaded_object *self) {
    PyObject_GC_UnTrack(self);
    if (self->weakrefs) PyObject_ClearWeakRefs((PyObject *)self);
    threaded_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *threaded_repr(threaded_object *self) {
    return PyUnicode_FromFormat("<vmown.threaded %R>", self->fn);
}

static PyObject *figures_tuple(const figures *f) {
    return Py_BuildValue("KKKK", f->calls, f->handed_over, f->out_ns, f->longest_ns);
}

static PyObject *threaded_figures(threaded_object *self, PyObject *unused) {
    return figures_tuple(&self->f);
}

static PyObject *threaded_entered(threaded_object *self, PyObject *unused) {
    return PyLong_FromUnsignedLongLong(self->f.entered);
}

static PyObject *threaded_has_entry(threaded_object *self, PyObject *unused) {
    return PyBool_FromLong(self->entry != NULL);
}

static PyMethodDef threaded_methods[] = {
    {"_entered", (PyCFunction)threaded_entered, METH_NOARGS,
     PyDoc_STR("how many of this wrapper's callouts came back through its blocking entry")},
    {"_has_entry", (PyCFunction)threaded_has_entry, METH_NOARGS,
     PyDoc_STR("whether this wrapper has a blocking entry (a cffi function of a supported signature)")},
    {"_figures", (PyCFunction)threaded_figures, METH_NOARGS,
     PyDoc_STR("(calls, handed_over, out_ns, longest_ns) of this wrapper's callouts")},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject threaded_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "vmown._callout_ext.Threaded",
    .tp_doc = PyDoc_STR("A function whose every call is a callout (made by vmown.threaded)."),
    .tp_basicsize = sizeof(threaded_object),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = threaded_new,
    .tp_traverse = (traverseproc)threaded_traverse,
    .tp_clear = (inquiry)threaded_clear,
    .tp_dealloc = (destructor)threaded_dealloc,
    .tp_repr = (reprfunc)threaded_repr,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(threaded_object, vectorcall),
    .tp_dictoffset = offsetof(threaded_object, dict),
    .tp_weaklistoffset = offsetof(threaded_object, weakrefs),
    .tp_methods = threaded_methods,
};

/* ---- the ownership guard (vmown/_scheduler.py, "_current") ----
 *
 * Each thread that serves a run records where the run's owner word is and
 * its own slot (bind); owns() is then one load of the word and a compare,
 * no lock, no call into the core: ~25 ns where a threading.local lookup
 * alone costs ~100.  The word is the core's (native/owner.c), read relaxed:
 * a thread that owns the VM wrote its own slot there (or was handed it) and
 * nobody else changes it while it owns, so the compare is exact for the
 * owner; for any other thread it is false whatever value it reads. */

static _Thread_local const _Atomic uint64_t *guard_word;
static _Thread_local uint32_t guard_slot;

static PyObject *guard_bind(PyObject *module, PyObject *args) {
    unsigned long long address;
    unsigned int slot;
    if (!PyArg_ParseTuple(args, "KI:bind", &address, &slot)) return NULL;
    guard_word = (const _Atomic uint64_t *)(uintptr_t)address;
    guard_slot = slot;
    Py_RETURN_NONE;
}

static PyObject *guard_owns(PyObject *module, PyObject *unused) {
    const _Atomic uint64_t *word = guard_word;
    if (word && (uint32_t)atomic_load_explicit(word, memory_order_relaxed) == guard_slot) Py_RETURN_TRUE;
    Py_RETURN_FALSE;
}

/* ---- the frames of every thread (the watchdog, a stuck run's warning) ----
 *
 * sys._current_frames() holds the runtime's thread-list lock while it makes
 * frame objects; an allocation there may start a collection, and a
 * threading.local freed by it takes the same lock: the thread deadlocks
 * holding the GIL (CPython gh-106883, fixed in 3.11.9, 3.12.3 and 3.13).  So
 * the collector is off for the call, as CPython's fix does.  Here in C no
 * other thread can run between the disable and the enable, so a thread that
 * turns the collector on or off meanwhile cannot be undone. */

static PyObject *current_frames(PyObject *module, PyObject *unused) {
    PyObject *fn = PySys_GetObject("_current_frames");  /* borrowed */
    if (!fn) {
        PyErr_SetString(PyExc_RuntimeError, "sys._current_frames is missing");
        return NULL;
    }
    int was_enabled = PyGC_Disable();
    PyObject *frames = PyObject_CallNoArgs(fn);
    if (was_enabled) PyGC_Enable();
    return frames;
}

/* ---- module ---- */

static PyObject *init(PyObject *module, PyObject *args) {
    unsigned long long address;
    PyObject *cdata, *pin_pointer_, *c_parameters_, *error_;
    if (!PyArg_ParseTuple(args, "KO!OOO:init", &address, &PyType_Type, &cdata, &pin_pointer_, &c_parameters_,
                          &error_))
        return NULL;
    const vmown_callout_table *table = (const vmown_callout_table *)(uintptr_t)address;
    if (!table || table->version != VMOWN_CALLOUT_API_VERSION || !table->try_end || !table->begin_eager ||
        !table->error) {
        PyErr_SetString(PyExc_ImportError, "vmown._callout_ext does not match vmown._native (rebuild vmown)");
        return NULL;
    }
    Py_XSETREF(cdata_type, (PyTypeObject *)Py_NewRef(cdata));
    Py_XSETREF(pin_pointer_fn, Py_NewRef(pin_pointer_));
    Py_XSETREF(c_parameters_fn, Py_NewRef(c_parameters_));
    Py_XSETREF(error_fn, Py_NewRef(error_));
    if (!known && !(known = PyDict_New())) return NULL;
    core_end = table->end;
    core_try_end = table->try_end;
    core_error = table->error;
    /* Eager: this path takes the GIL back after the call and before its
     * end (cffi does), and a lazy callout would hold the VM meanwhile.  (A
     * call through the blocking entry does not, but a short call that goes
     * lazily can be revoked while it is descheduled, and the function is
     * then taken for one that blocks: docs/design-log.md, "The blocking
     * entry".) */
    core_begin = table->begin_eager;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(callout_doc,
"callout($module, fn, /, *args, **kwargs)\n--\n\n"
"Call ``fn(*args, **kwargs)`` with the VM disowned, and own it again after.\n\n"
"From a process of :func:`vmown.run`, the VM is given up for the duration\n"
"of the call, so other processes keep running if the call blocks (after a\n"
"heartbeat tick, another thread takes the VM).  Exceptions propagate with\n"
"their traceback, and ``ffi.errno`` after the call is the call's own.\n"
"From a thread that serves no VM, or from inside another callout, it is a\n"
"plain call.\n\n"
"For a cffi function the rules of :func:`threaded` apply: a buffer for a\n"
"pointer parameter is pinned and passed as a pointer; a read-only buffer\n"
"(bytes, a read-only numpy array) is accepted only for a ``const`` pointer;\n"
"a str, list or other object for a pointer is refused with a TypeError\n"
"before the call.  A Python callable takes any arguments; buffers among\n"
"them are pinned for the call (resizing one meanwhile raises BufferError).");

static PyObject *target_figures_list(PyObject *module, PyObject *unused) {
    PyObject *list = PyList_New(0);
    for (unsigned i = 0; list && i <= TARGETS; i++) {
        PyObject *fn = i < TARGETS ? targets[i].fn : Py_None;
        const figures *f = i < TARGETS ? &targets[i].f : &other;
        if (!fn || !f->calls) continue;
        PyObject *row = Py_BuildValue("(ON)", fn, figures_tuple(f));
        if (!row || PyList_Append(list, row) < 0) Py_CLEAR(list);
        Py_XDECREF(row);
    }
    return list;
}

static PyObject *set_timing(PyObject *module, PyObject *arg) {
    int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
    int was = timing;
    timing = on;
    return PyBool_FromLong(was);
}

static PyMethodDef methods[] = {
    {"target_figures", target_figures_list, METH_NOARGS,
     PyDoc_STR("[(fn, (calls, handed_over, out_ns, longest_ns))] of callout()'s targets; fn None: the rest")},
    {"set_timing", set_timing, METH_O, PyDoc_STR("set_timing(on) -> was: time each callout from now on")},
    {"init", init, METH_VARARGS, PyDoc_STR("init(table_address, cdata_type, pin_pointer, c_parameters)")},
    {"make_entry", make_entry, METH_VARARGS,
     PyDoc_STR("make_entry(address, signature) -> (keep, code_address): a blocking entry for the C function at "
               "address")},
    {"callout", (PyCFunction)(void (*)(void))callout, METH_FASTCALL | METH_KEYWORDS, callout_doc},
    {"bind", guard_bind, METH_VARARGS, PyDoc_STR("bind(owner_word_address, slot): this thread serves a run (0: none)")},
    {"owns", guard_owns, METH_NOARGS, PyDoc_STR("owns() -> whether this thread owns the VM it was bound to")},
    {"current_frames", current_frames, METH_NOARGS,
     PyDoc_STR("current_frames() -> sys._current_frames(), with the collector off for the call (gh-106883)")},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "vmown._callout_ext", "vmown.callout and vmown.threaded in C.", -1, methods,
};

PyMODINIT_FUNC PyInit__callout_ext(void) {
    if (PyType_Ready(&threaded_type) < 0) return NULL;
    PyObject *module = PyModule_Create(&module_def);
    if (!module) return NULL;
    if (PyModule_AddObjectRef(module, "Threaded", (PyObject *)&threaded_type) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
