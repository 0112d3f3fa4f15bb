/* channel_ext.c -- vmown._channel_ext: the per-message calls of vmown.Channel.
 *
 * Why it exists.  Streaming small messages from Python, a channel costs
 * what surrounds it: the C core moves 25-40 M messages/s between two
 * processes, a Python method around a cffi call about 4 M/s.  cffi charges
 * ~90-110 ns for a call with two or more arguments (it builds a tuple),
 * ~45 ns for one, and every cffi call releases and re-takes the GIL; the
 * Python method around it adds a frame.  Here send(data) and recv() are one
 * call of a C method on the Channel itself.
 *
 * What it is: ChannelBase, the base type of vmown.Channel (vmown/_channel.py).
 * It borrows the process-local handle (vmown_channel *) and defines send()
 * and recv().  Their fast path is one attempt that never waits
 * (vmown_channel_try_send / _try_recv), made with the GIL held: room in the
 * ring (a message in it) -> copy, publish, return, with no system call
 * unless a peer sleeps and must be woken.  Everything else is left to the
 * Python methods self._send_slow(data, timeout) / self._recv_slow(timeout),
 * which were there before this module and do what they did:
 *   - a full or empty ring, or a side lock held by someone else: they wait,
 *     in C with the GIL released;
 *   - every error (closed, broken, detached, too long, not bytes-like): they
 *     make the call again and raise, so _channel.py stays the one place
 *     where a code becomes an exception and both paths raise the same;
 *   - arguments the fast path does not take (a timeout that is not None or
 *     a finite int / float >= 0): they check them and say what is wrong;
 *   - messages over FAST_BYTES: their copy then runs without the GIL.
 *
 * Rejected: a thinner Python method around a one-argument cffi call (still a
 * Python frame, a cffi call and a GIL release per message: the cost itself);
 * the whole Channel in C (its slow paths, errors and pickling gain nothing
 * there); compiling channel.c into this module (a second copy of the core in
 * the process, with its own cached process identity and its own debug stop
 * points, which tests set through vmown._native).  Chosen: the core's
 * function pointers from vmown_channel_api() of vmown._native, passed to
 * bind() as an integer and checked by version, as vmown.bind_threaded does
 * for generated wrappers.  vmown.h is included for its types only; nothing
 * of the core is linked here.
 *
 * The GIL is what makes this sound:
 *   - The fast path holds it from start to end.  detach() needs it, so it
 *     cannot free the handle during a call; the handle is read after the
 *     buffer protocol has run (a Python __buffer__ could detach), and no
 *     Python code runs between that read and the C call.
 *   - One receive buffer per Channel serves all its threads: a message is
 *     copied into it and out into a bytes object under the GIL.  Without a
 *     GIL (a free-threaded build) that would race; the module does not
 *     declare Py_mod_gil, so such a build turns the GIL on at import.
 *   - A wait under the GIL would stall every thread of the process, perhaps
 *     the very one that was to make the room or send the message: the fast
 *     path never waits (a held side lock is "not now" too), and it copies at
 *     most FAST_BYTES (a few us) while holding the GIL.
 * Lifetime: the handle belongs to the Channel's cffi pointer (`_h`, freed by
 * ffi.gc); _bind() lends it here after create / open, and detach() unbinds
 * (address 0) before it drops `_h`.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>

#include "vmown.h"

#define FAST_BYTES (64 * 1024) /* longest message copied with the GIL held */

#include "vmown_shorthands.h"

/* Set once by bind(), before any Channel exists; NULL: every call goes slow. */
static const vmown_channel_table *core;
static PyObject *str_send_slow, *str_recv_slow, *str_data, *str_timeout;

typedef struct {
    PyObject_HEAD
    /* ch: the borrowed handle (NULL: unbound or detached); buf, cap: the
     * receive buffer (PyMem, min(max_message, FAST_BYTES) bytes).  Used only
     * with the GIL held. */
    vmown_channel_port port;
} ChannelBase;

/* ---- arguments ---- */

/* Fill out[0..n) from positional arguments, then keywords by name (borrowed
 * references; NULL: not given).  -1 with the TypeError Python would raise. */
static int unpack(const char *function, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                  PyObject *const *names, Py_ssize_t n, Py_ssize_t required, PyObject **out) {
    if (nargs > n) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %zd arguments (%zd given)", function, n, nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) out[i] = i < nargs ? args[i] : NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        Py_ssize_t j = 0;
        while (j < n && key != names[j] && PyUnicode_Compare(key, names[j]) != 0) j++;
        if (j == n) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", function, key);
            return -1;
        }
        if (out[j]) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%U'", function, key);
            return -1;
        }
        out[j] = args[nargs + k];
    }
    for (Py_ssize_t i = 0; i < required; i++)
        if (!out[i]) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%U'", function, names[i]);
            return -1;
        }
    return 0;
}

/* A timeout the fast path may take without checking it further: None, or an
 * exact int or float, finite and >= 0.  Anything else (True, -1, nan, a
 * float subclass...) goes to the slow path, which accepts or refuses it. */
static int plain_timeout(PyObject *timeout) {
    if (timeout == Py_None) return 1;
    if (PyFloat_CheckExact(timeout)) {
        double s = PyFloat_AS_DOUBLE(timeout);
        return isfinite(s) && s >= 0;
    }
    if (PyLong_CheckExact(timeout)) {
        int overflow;
        long long s = PyLong_AsLongLongAndOverflow(timeout, &overflow);
        return !overflow && s >= 0;  /* an exact int cannot fail otherwise */
    }
    return 0;
}

/* ---- send, recv ---- */

static PyObject *send_names[2], *recv_names[1];

PyDoc_STRVAR(send_doc,
"send($self, /, data, timeout=None)\n--\n\n"
"Send ``data`` (bytes-like), waiting up to ``timeout`` seconds (None: for ever) for room.\n\n"
"Raises ValueError if it is longer than :attr:`max_message`,\n"
":class:`ChannelClosed` once the channel is closed, TimeoutError.\n"
"``timeout=0`` never waits.");

static PyObject *channel_send(ChannelBase *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    PyObject *given[2] = {NULL, NULL};
    if (likely(nargs == 1 && !kwnames))
        given[0] = args[0];
    else if (unpack("send", args, nargs, kwnames, send_names, 2, 1, given) < 0)
        return NULL;
    PyObject *data = given[0], *timeout = given[1] ? given[1] : Py_None;
    if (likely(core && plain_timeout(timeout))) {
        int rc = VMOWN_EAGAIN;
        if (likely(PyBytes_CheckExact(data))) {
            Py_ssize_t len = PyBytes_GET_SIZE(data);
            if (likely(len <= FAST_BYTES && self->port.ch))
                rc = core->try_send(self->port.ch, PyBytes_AS_STRING(data), (uint64_t)len);
        } else if (PyObject_CheckBuffer(data)) {
            Py_buffer view;
            if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) == 0) {
                /* self->port.ch read now: the exporter may have run Python code */
                if (view.len <= FAST_BYTES && self->port.ch)
                    rc = core->try_send(self->port.ch, view.buf, (uint64_t)view.len);
                PyBuffer_Release(&view);
            } else {
                PyErr_Clear();  /* not contiguous, say: the slow path decides */
            }
        }
        if (likely(rc == 0)) Py_RETURN_NONE;
    }
    PyObject *call[3] = {(PyObject *)self, data, timeout};
    return PyObject_VectorcallMethod(str_send_slow, call, 3, NULL);
}

PyDoc_STRVAR(recv_doc,
"recv($self, /, timeout=None)\n--\n\n"
"The oldest message, waiting up to ``timeout`` seconds (None: for ever) for one.\n\n"
"Raises :class:`ChannelClosed` once the channel is closed and empty,\n"
"TimeoutError.  ``timeout=0`` never waits.");

static PyObject *channel_recv(ChannelBase *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    PyObject *timeout = Py_None;
    if (nargs || kwnames) {
        PyObject *given[1];
        if (unpack("recv", args, nargs, kwnames, recv_names, 1, 0, given) < 0) return NULL;
        if (given[0]) timeout = given[0];
    }
    if (likely(core && self->port.ch && plain_timeout(timeout))) {
        int64_t n = core->try_recv(&self->port);
        if (likely(n >= 0)) return PyBytes_FromStringAndSize(self->port.buf, (Py_ssize_t)n);
    }
    PyObject *call[2] = {(PyObject *)self, timeout};
    return PyObject_VectorcallMethod(str_recv_slow, call, 2, NULL);
}

/* ---- binding the handle ---- */

static int to_u64(PyObject *value, const char *what, uint64_t *out) {
    unsigned long long v = PyLong_AsUnsignedLongLong(value);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Format(PyExc_ValueError, "_bind: %s must be an int >= 0", what);
        return -1;
    }
    *out = v;
    return 0;
}

static PyObject *channel_bind(ChannelBase *self, PyObject *args) {
    PyObject *address_obj, *max_message_obj;
    uint64_t address, max_message;
    if (!PyArg_ParseTuple(args, "OO:_bind", &address_obj, &max_message_obj) ||
        to_u64(address_obj, "address", &address) < 0 || to_u64(max_message_obj, "max_message", &max_message) < 0)
        return NULL;
    if (address == 0) {
        self->port.ch = NULL;
        PyMem_Free(self->port.buf);
        self->port.buf = NULL;
        self->port.cap = 0;
        Py_RETURN_NONE;
    }
    uint64_t cap = max_message < FAST_BYTES ? max_message : FAST_BYTES;
    if (cap == 0) {
        PyErr_SetString(PyExc_ValueError, "_bind: max_message must be >= 1");
        return NULL;
    }
    char *buf = PyMem_Realloc(self->port.buf, (size_t)cap);
    if (!buf) return PyErr_NoMemory();
    self->port.buf = buf;
    self->port.cap = cap;
    self->port.ch = (vmown_channel *)(uintptr_t)address;
    Py_RETURN_NONE;
}

static void channel_dealloc(ChannelBase *self) {
    PyMem_Free(self->port.buf);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef channel_methods[] = {
    {"send", (PyCFunction)(void (*)(void))channel_send, METH_FASTCALL | METH_KEYWORDS, send_doc},
    {"recv", (PyCFunction)(void (*)(void))channel_recv, METH_FASTCALL | METH_KEYWORDS, recv_doc},
    {"_bind", (PyCFunction)channel_bind, METH_VARARGS,
     "_bind(address, max_message): lend this object the handle at address (0: unbind)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ChannelBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "vmown._channel_ext.ChannelBase",
    .tp_basicsize = sizeof(ChannelBase),
    .tp_dealloc = (destructor)channel_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "The C half of vmown.Channel: the borrowed handle and the per-message calls.",
    .tp_methods = channel_methods,
    .tp_new = PyType_GenericNew,
};

/* ---- the module ---- */

static PyObject *bind(PyObject *module, PyObject *address_obj) {
    uint64_t address;
    if (to_u64(address_obj, "the table's address", &address) < 0) return NULL;
    const vmown_channel_table *table = (const vmown_channel_table *)(uintptr_t)address;
    if (!table || table->version != VMOWN_CHANNEL_API_VERSION) {
        PyErr_Format(PyExc_ImportError,
                     "vmown._channel_ext expects channel API version %d, vmown._native gives %d: the two "
                     "come from different builds; reinstall with pip install -e .",
                     VMOWN_CHANNEL_API_VERSION, table ? table->version : 0);
        return NULL;
    }
    core = table;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"bind", bind, METH_O, "bind(address): use the vmown_channel_table at address (vmown_channel_api())."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "vmown._channel_ext",
    .m_doc = "The per-message calls of vmown.Channel in C (native/pyext/channel_ext.c).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__channel_ext(void) {
    if (!(str_send_slow = PyUnicode_InternFromString("_send_slow")) ||
        !(str_recv_slow = PyUnicode_InternFromString("_recv_slow")) ||
        !(str_data = PyUnicode_InternFromString("data")) || !(str_timeout = PyUnicode_InternFromString("timeout")))
        return NULL;
    send_names[0] = str_data;
    send_names[1] = str_timeout;
    recv_names[0] = str_timeout;
    if (PyType_Ready(&ChannelBaseType) < 0) return NULL;
    PyObject *module = PyModule_Create(&module_def);
    if (!module) return NULL;
    Py_INCREF(&ChannelBaseType);
    if (PyModule_AddObject(module, "ChannelBase", (PyObject *)&ChannelBaseType) < 0) {
        Py_DECREF(&ChannelBaseType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
