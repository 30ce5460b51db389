/* The hot path of pytest_mpcheck.locks.checked.CheckedLock, in C (optional: checked.py falls back
 * to the same code in Python when this is not built, when PYTEST_MPCHECK_PURE_PYTHON is set, and
 * on a free-threaded build, where this module is never imported).
 *
 * An uncontended acquire() or release() of a checked lock writes one 16-byte record into the
 * process's memory-mapped record file. In Python the clock, the caller's frame and the packing of
 * the record cost 15 times the lock itself; here they cost about as much as the lock. Everything
 * rare stays in Python and is called by name: numbering a new acquisition site
 * (RecordWriter.locate), attaching a lock to the process's record file (CheckedLock._attach), a
 * contended wait (CheckedLock._wait), a release by a process that did not hold the lock
 * (CheckedLock._release_not_held) and growing the file (RecordWriter.grow).
 *
 * Records are as documented in records.py: little-endian "<QIHBB" (ts, site, lock, kind, flags).
 * The ts is written last, with release ordering: a reader that sees it sees the whole record.
 * A record that cannot be written (RecordWriter.grow raised) never leaves the semaphore taken:
 * acquire() gives it back and release() releases it all the same, then the error propagates.
 *
 * Everything here runs with the GIL held, which is what makes taking a slot (Records.next) safe
 * between the threads of a process, as next() on an itertools.count is in Python: the module
 * declares Py_MOD_GIL_USED, and checked.py does not import it on a free-threaded build.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <frameobject.h>
#include <pythread.h>
#include <structmember.h>

#include <stdint.h>
#include <string.h>
#include <time.h>

/* Must match records.py; checked.py compares them with FORMAT before it uses this module. */
#define RECORD_SIZE 16
#define ACQUIRED 1
#define RELEASED 3
#define RELEASE_FAILED 4
#define TRY 2
/* The version of what LockCore shares with checked.py (its attributes and their meaning), the
 * last item of FORMAT: 2 added _owner and _per_thread. */
#define CORE_VERSION 2

/* Sites cached per lock: a lock is taken at a few places; a miss only costs a dict look-up in
 * RecordWriter.locate, so the cache can be small. */
#define SITE_CACHE 8

#if PY_VERSION_HEX >= 0x030B0000
#define FRAME_LASTI(frame) PyFrame_GetLasti(frame)
#else
#define FRAME_LASTI(frame) ((frame)->f_lasti)
#endif

static PyObject *str_attach, *str_locate, *str_rec, *str_release, *str_block, *str_timeout;

/* -- Records: a writer's record buffer ------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    Py_buffer view; /* of the writer's mmap, while attached */
    int attached;
    Py_ssize_t size; /* bytes of view; 0 when detached: every write then asks RecordWriter.grow */
    Py_ssize_t next; /* offset of the next free slot, shared by all locks of the writer */
} Records;

static PyTypeObject RecordsType;

static int
records_get(Records *self, PyObject *buffer)
{
    Py_buffer view;
    if (PyObject_GetBuffer(buffer, &view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        return -1;
    }
    if (((uintptr_t)view.buf & 7) != 0) {
        /* an mmap is page-aligned; the ts must be one aligned 8-byte store */
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "the record buffer must be 8-byte aligned");
        return -1;
    }
    /* The new export first, then the old one is released: no moment without a buffer, and the
     * old mmap can be closed or freed as soon as this returns. */
    if (self->attached) {
        PyBuffer_Release(&self->view);
    }
    self->view = view;
    self->attached = 1;
    self->size = view.len;
    return 0;
}

static int
records_init(Records *self, PyObject *args, PyObject *kwds)
{
    PyObject *buffer;
    static char *kwlist[] = {"buffer", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:Records", kwlist, &buffer)) {
        return -1;
    }
    self->next = 0;
    return records_get(self, buffer);
}

static void
records_detach(Records *self)
{
    if (self->attached) {
        self->attached = 0;
        self->size = 0;
        PyBuffer_Release(&self->view);
    }
}

static void
records_dealloc(Records *self)
{
    records_detach(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
records_attach(Records *self, PyObject *buffer)
{
    if (records_get(self, buffer) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
records_release(Records *self, PyObject *Py_UNUSED(ignored))
{
    records_detach(self);
    Py_RETURN_NONE;
}

static PyObject *
records_iternext(Records *self)
{
    Py_ssize_t off = self->next;
    self->next = off + RECORD_SIZE;
    return PyLong_FromSsize_t(off);
}

static PyObject *
records_get_size(Records *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->size);
}

static PyMethodDef records_methods[] = {
    {"attach", (PyCFunction)records_attach, METH_O,
     "attach(buffer)\n--\n\nWrite into ``buffer`` from now on (the writer's new, bigger map)."},
    {"release", (PyCFunction)records_release, METH_NOARGS,
     "release()\n--\n\nLet go of the buffer, so that its mmap can be closed."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef records_getset[] = {
    {"size", (getter)records_get_size, NULL, "Bytes of the attached buffer (0 when released).",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RecordsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pytest_mpcheck.locks._lockrec.Records",
    .tp_basicsize = sizeof(Records),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Records(buffer)\n--\n\n"
              "A writer's record buffer (its mmap) and the offset of its next free slot.\n\n"
              "Iterating gives the offset of a new slot each time, as itertools.count(0, 16) "
              "does.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)records_init,
    .tp_dealloc = (destructor)records_dealloc,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)records_iternext,
    .tp_methods = records_methods,
    .tp_getset = records_getset,
};

/* -- LockCore: the base of CheckedLock ------------------------------------------------------- */

typedef struct {
    PyObject *code; /* strong: its address cannot be reused by another code object meanwhile */
    int lasti;
    uint32_t site;
} SiteEntry;

typedef struct {
    PyObject_HEAD
    PyObject *lock;    /* _lock: the multiprocessing lock */
    PyObject *try_;    /* _try: its bound acquire */
    PyObject *release; /* its bound release */
    PyObject *writer;  /* _w: this process's RecordWriter, or NULL when not attached */
    Records *rec;      /* writer.rec */
    uint16_t idx;      /* _idx: the lock's number in the writer's records (16 bits of a record) */
    Py_ssize_t held;   /* _held: acquisitions by this process not yet released */
    unsigned long owner; /* _owner: the thread that took the first of them (threading.get_ident) */
    char per_thread;     /* _per_thread: an RLock, whose holder is a thread, not a process */
    int cache_next;
    SiteEntry cache[SITE_CACHE]; /* site numbers of the writer: emptied when the writer changes */
} LockCore;

static void
core_clear_cache(LockCore *self)
{
    /* A code object may have a weakref callback: set every entry empty before it can run. */
    PyObject *codes[SITE_CACHE];
    for (int i = 0; i < SITE_CACHE; i++) {
        codes[i] = self->cache[i].code;
        self->cache[i].code = NULL;
    }
    self->cache_next = 0;
    for (int i = 0; i < SITE_CACHE; i++) {
        Py_XDECREF(codes[i]);
    }
}

static int
core_traverse(LockCore *self, visitproc visit, void *arg)
{
    Py_VISIT(self->lock);
    Py_VISIT(self->try_);
    Py_VISIT(self->release);
    Py_VISIT(self->writer);
    Py_VISIT(self->rec);
    for (int i = 0; i < SITE_CACHE; i++) {
        Py_VISIT(self->cache[i].code);
    }
    return 0;
}

static int
core_clear(LockCore *self)
{
    Py_CLEAR(self->lock);
    Py_CLEAR(self->try_);
    Py_CLEAR(self->release);
    Py_CLEAR(self->writer);
    Py_CLEAR(self->rec);
    core_clear_cache(self);
    return 0;
}

static void
core_dealloc(LockCore *self)
{
    PyObject_GC_UnTrack(self);
    core_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Attach to this process's record file on first use (or again after fork). */
static int
core_ensure_writer(LockCore *self)
{
    if (self->writer != NULL) {
        return 0;
    }
    PyObject *writer = PyObject_CallMethodNoArgs((PyObject *)self, str_attach);
    if (writer == NULL) {
        return -1;
    }
    Py_DECREF(writer);
    if (self->writer == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "CheckedLock._attach() did not set _w");
        return -1;
    }
    return 0;
}

static inline uint64_t
monotonic_ns(void)
{
    /* The clock of time.monotonic_ns(), which the reader and the Python records use too. */
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
}

/* Write one record; rec and writer are the caller's strong references (Python code may run
 * in RecordWriter.grow, and may detach this lock from them meanwhile). */
static int
core_write(LockCore *self, PyObject *writer, Records *rec, uint32_t site, uint8_t kind,
           uint8_t flags)
{
    uint16_t idx = self->idx;
    Py_ssize_t off = rec->next;
    rec->next = off + RECORD_SIZE;
    if (off + RECORD_SIZE > rec->size) {
        PyObject *done = PyObject_CallMethod(writer, "grow", "n", off);
        if (done == NULL) {
            return -1;
        }
        Py_DECREF(done);
        if (off + RECORD_SIZE > rec->size) {
            return 0; /* the writer was closed meanwhile (the test is over): nobody reads this */
        }
    }
    unsigned char *slot = (unsigned char *)rec->view.buf + off;
    slot[8] = (unsigned char)site;
    slot[9] = (unsigned char)(site >> 8);
    slot[10] = (unsigned char)(site >> 16);
    slot[11] = (unsigned char)(site >> 24);
    slot[12] = (unsigned char)idx;
    slot[13] = (unsigned char)(idx >> 8);
    slot[14] = kind;
    slot[15] = flags;
    uint64_t ts = monotonic_ns();
#if PY_LITTLE_ENDIAN
    __atomic_store_n((uint64_t *)slot, ts, __ATOMIC_RELEASE);
#else
    __atomic_store_n((uint64_t *)slot, __builtin_bswap64(ts), __ATOMIC_RELEASE);
#endif
    return 0;
}

/* Release the wrapped semaphore after a record could not be written, keeping the write's error:
 * it is the one to raise (the release's own, if any, would hide it). */
static void
core_release_raw(LockCore *self)
{
    PyObject *release = Py_XNewRef(self->release);
    if (release == NULL) {
        return;
    }
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *error = PyErr_GetRaisedException();
    PyObject *none = PyObject_CallNoArgs(release);
    Py_XDECREF(none);
    if (none == NULL) {
        PyErr_Clear();
    }
    PyErr_SetRaisedException(error);
#else
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyObject *none = PyObject_CallNoArgs(release);
    Py_XDECREF(none);
    if (none == NULL) {
        PyErr_Clear();
    }
    PyErr_Restore(type, value, traceback);
#endif
    Py_DECREF(release);
}

/* The site number of the caller's current instruction: from the lock's cache, else numbered by
 * RecordWriter.locate (which also walks out of multiprocessing's own frames, and writes the
 * text). */
static int
core_site(LockCore *self, PyObject *writer, uint32_t *site)
{
    /* A C method pushes no frame: the current frame is the code that called acquire(), whether
     * as lock.acquire() or through `with lock:`. */
    PyFrameObject *frame = PyEval_GetFrame();
    if (frame == NULL) {
        *site = 0; /* called from C with no Python frame at all: no site to name */
        return 0;
    }
    PyCodeObject *code = PyFrame_GetCode(frame);
    int lasti = FRAME_LASTI(frame);
    for (int i = 0; i < SITE_CACHE; i++) {
        if (self->cache[i].code == (PyObject *)code && self->cache[i].lasti == lasti) {
            *site = self->cache[i].site;
            Py_DECREF(code);
            return 0;
        }
    }
    PyObject *number = PyObject_CallMethodOneArg(writer, str_locate, (PyObject *)frame);
    if (number == NULL) {
        Py_DECREF(code);
        return -1;
    }
    unsigned long value = PyLong_AsUnsignedLong(number);
    Py_DECREF(number);
    if (value == (unsigned long)-1 && PyErr_Occurred()) {
        Py_DECREF(code);
        return -1;
    }
    if (value > UINT32_MAX) {
        Py_DECREF(code);
        PyErr_Format(PyExc_OverflowError, "site number %lu does not fit a record", value);
        return -1;
    }
    *site = (uint32_t)value;
    if (self->writer != writer) {
        Py_DECREF(code); /* detached or attached elsewhere meanwhile: the number is not theirs */
        return 0;
    }
    SiteEntry *entry = &self->cache[self->cache_next];
    self->cache_next = (self->cache_next + 1) % SITE_CACHE;
    PyObject *old = entry->code;
    entry->code = (PyObject *)code; /* the reference from PyFrame_GetCode */
    entry->lasti = lasti;
    entry->site = (uint32_t)value;
    Py_XDECREF(old);
    return 0;
}

static PyObject *
core_acquire_impl(LockCore *self, int block, PyObject *timeout)
{
    if (self->try_ == NULL) {
        PyErr_SetString(PyExc_TypeError, "the checked lock was not set up");
        return NULL;
    }
    if (core_ensure_writer(self) < 0) {
        return NULL;
    }
    PyObject *result = NULL;
    PyObject *writer = Py_NewRef(self->writer);
    Records *rec = (Records *)Py_NewRef(self->rec);
    PyObject *try_ = Py_NewRef(self->try_);
    uint32_t site;
    if (core_site(self, writer, &site) < 0) {
        goto done;
    }
    PyObject *args[2] = {NULL, Py_False};
    PyObject *got = PyObject_Vectorcall(try_, args + 1, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (got == NULL) {
        goto done;
    }
    int acquired = PyObject_IsTrue(got);
    Py_DECREF(got);
    if (acquired < 0) {
        goto done;
    }
    if (acquired) {
        if (core_write(self, writer, rec, site, ACQUIRED, block ? 0 : TRY) < 0) {
            /* Not recorded: the acquisition is undone, else a `with` block that raised in
             * __enter__ would never release it. */
            core_release_raw(self);
            goto done;
        }
        if (self->held == 0) {
            self->owner = PyThread_get_thread_ident();
        }
        self->held += 1;
        result = Py_NewRef(Py_True);
    }
    else if (!block) {
        result = Py_NewRef(Py_False);
    }
    else {
        /* Contended: REQUESTED, the blocking acquire, ACQUIRED or GAVE_UP, in Python. */
        result = PyObject_CallMethod((PyObject *)self, "_wait", "OIO", writer, (unsigned int)site,
                                     timeout);
    }
done:
    Py_DECREF(try_);
    Py_DECREF(rec);
    Py_DECREF(writer);
    return result;
}

static PyObject *
core_acquire(LockCore *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *block = NULL, *timeout = NULL;
    if (nargs > 2) {
        PyErr_Format(PyExc_TypeError, "acquire() takes at most 2 arguments (%zd given)", nargs);
        return NULL;
    }
    if (nargs >= 1) {
        block = args[0];
    }
    if (nargs == 2) {
        timeout = args[1];
    }
    if (kwnames != NULL) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
            PyObject *name = PyTuple_GET_ITEM(kwnames, i);
            PyObject **slot;
            if (PyUnicode_Compare(name, str_block) == 0) {
                slot = &block;
            }
            else if (PyUnicode_Compare(name, str_timeout) == 0) {
                slot = &timeout;
            }
            else {
                PyErr_Format(PyExc_TypeError,
                             "acquire() got an unexpected keyword argument '%U'", name);
                return NULL;
            }
            if (*slot != NULL) {
                PyErr_Format(PyExc_TypeError, "acquire() got multiple values for argument '%U'",
                             name);
                return NULL;
            }
            *slot = args[nargs + i];
        }
    }
    int blocking = 1;
    if (block != NULL) {
        blocking = PyObject_IsTrue(block);
        if (blocking < 0) {
            return NULL;
        }
    }
    return core_acquire_impl(self, blocking, timeout != NULL ? timeout : Py_None);
}

static PyObject *
core_enter(LockCore *self, PyObject *Py_UNUSED(ignored))
{
    return core_acquire_impl(self, 1, Py_None);
}

static PyObject *
core_release_impl(LockCore *self)
{
    if (self->release == NULL) {
        PyErr_SetString(PyExc_TypeError, "the checked lock was not set up");
        return NULL;
    }
    if (core_ensure_writer(self) < 0) {
        return NULL;
    }
    /* A Lock is any thread's to release, an RLock only its owner thread's: another thread's
     * release raises in multiprocessing and releases nothing (see checked._PyLockCore). */
    if (self->held <= 0 || (self->per_thread && self->owner != PyThread_get_thread_ident())) {
        /* Depth 1: this C method has no frame, so the caller of release() is one up from
         * _release_not_held (in Python it is three). */
        return PyObject_CallMethod((PyObject *)self, "_release_not_held", "Oi", self->writer, 1);
    }
    PyObject *result = NULL;
    PyObject *writer = Py_NewRef(self->writer);
    Records *rec = (Records *)Py_NewRef(self->rec);
    PyObject *release = Py_NewRef(self->release);
    self->held -= 1;
    if (core_write(self, writer, rec, 0, RELEASED, 0) < 0) {
        /* Not recorded: released all the same, else nothing would ever release it. */
        core_release_raw(self);
        goto done;
    }
    PyObject *none = PyObject_CallNoArgs(release);
    if (none == NULL) {
        /* The semaphore was free already (released behind this lock): the hold is over. The
         * release's own error is the one to raise; one from recording it would hide it. */
#if PY_VERSION_HEX >= 0x030C0000
        PyObject *error = PyErr_GetRaisedException();
        if (core_write(self, writer, rec, 0, RELEASE_FAILED, 0) < 0) {
            PyErr_Clear();
        }
        PyErr_SetRaisedException(error);
#else
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        if (core_write(self, writer, rec, 0, RELEASE_FAILED, 0) < 0) {
            PyErr_Clear();
        }
        PyErr_Restore(type, value, traceback);
#endif
        goto done;
    }
    Py_DECREF(none);
    result = Py_NewRef(Py_None);
done:
    Py_DECREF(release);
    Py_DECREF(rec);
    Py_DECREF(writer);
    return result;
}

static PyObject *
core_release(LockCore *self, PyObject *Py_UNUSED(ignored))
{
    return core_release_impl(self);
}

static PyObject *
core_exit(LockCore *self, PyObject *const *Py_UNUSED(args), Py_ssize_t Py_UNUSED(nargs))
{
    return core_release_impl(self);
}

/* -- attributes that the Python side sets ---------------------------------------------------- */

static PyObject *
core_get_lock(LockCore *self, void *Py_UNUSED(closure))
{
    if (self->lock == NULL) {
        PyErr_SetString(PyExc_AttributeError, "_lock");
        return NULL;
    }
    return Py_NewRef(self->lock);
}

static int
core_set_lock(LockCore *self, PyObject *value, void *Py_UNUSED(closure))
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete _lock");
        return -1;
    }
    /* Its bound release, looked up once: multiprocessing's locks bind it per instance. */
    PyObject *release = PyObject_GetAttr(value, str_release);
    if (release == NULL) {
        return -1;
    }
    Py_XSETREF(self->release, release);
    Py_XSETREF(self->lock, Py_NewRef(value));
    return 0;
}

static PyObject *
core_get_idx(LockCore *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(self->idx);
}

static int
core_set_idx(LockCore *self, PyObject *value, void *Py_UNUSED(closure))
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete _idx");
        return -1;
    }
    long idx = PyLong_AsLong(value);
    if (idx == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (idx < 0 || idx > UINT16_MAX) {
        /* CheckedLock._attach says why with MAX_LOCKS first; this keeps a record from ever
         * holding another lock's number. */
        PyErr_Format(PyExc_OverflowError, "lock number %ld does not fit a record", idx);
        return -1;
    }
    self->idx = (uint16_t)idx;
    return 0;
}

static PyObject *
core_get_w(LockCore *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->writer != NULL ? self->writer : Py_None);
}

static int
core_set_w(LockCore *self, PyObject *value, void *Py_UNUSED(closure))
{
    PyObject *writer = NULL;
    Records *rec = NULL;
    if (value != NULL && value != Py_None) {
        PyObject *found = PyObject_GetAttr(value, str_rec);
        if (found == NULL) {
            return -1;
        }
        if (!PyObject_TypeCheck(found, &RecordsType)) {
            Py_DECREF(found);
            PyErr_SetString(PyExc_TypeError, "the writer's rec must be a _lockrec.Records");
            return -1;
        }
        rec = (Records *)found;
        writer = Py_NewRef(value);
    }
    PyObject *old_writer = self->writer;
    Records *old_rec = self->rec;
    self->writer = writer;
    self->rec = rec;
    core_clear_cache(self); /* site numbers belong to one writer */
    Py_XDECREF(old_rec);
    Py_XDECREF(old_writer);
    return 0;
}

static PyMethodDef core_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))core_acquire, METH_FASTCALL | METH_KEYWORDS,
     "acquire($self, /, block=True, timeout=None)\n--\n\n"
     "Acquire the lock, as ``multiprocessing.Lock.acquire`` does, and record it."},
    {"release", (PyCFunction)core_release, METH_NOARGS,
     "release($self, /)\n--\n\n"
     "Release the lock, as ``multiprocessing.Lock.release`` does, and record it."},
    {"__enter__", (PyCFunction)core_enter, METH_NOARGS,
     "__enter__($self, /)\n--\n\nAcquire the lock (blocking) and record it."},
    {"__exit__", (PyCFunction)(void (*)(void))core_exit, METH_FASTCALL,
     "__exit__($self, /, *exc_info)\n--\n\nRelease the lock and record it."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef core_members[] = {
    {"_try", T_OBJECT_EX, offsetof(LockCore, try_), 0, "The wrapped lock's bound acquire."},
    {"_held", T_PYSSIZET, offsetof(LockCore, held), 0, "Holds by this process not released."},
    {"_owner", T_ULONG, offsetof(LockCore, owner), 0, "The thread that took the first hold."},
    {"_per_thread", T_BOOL, offsetof(LockCore, per_thread), 0,
     "Whether the holder is a thread (an RLock), not the process."},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef core_getset[] = {
    {"_lock", (getter)core_get_lock, (setter)core_set_lock, "The wrapped multiprocessing lock.",
     NULL},
    {"_idx", (getter)core_get_idx, (setter)core_set_idx, "The lock's number in the records.",
     NULL},
    {"_w", (getter)core_get_w, (setter)core_set_w,
     "This process's record writer, or None before the first use (and in a new child).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject LockCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pytest_mpcheck.locks._lockrec.LockCore",
    .tp_basicsize = sizeof(LockCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The hot path of CheckedLock: acquire, release, __enter__, __exit__.",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)core_dealloc,
    .tp_traverse = (traverseproc)core_traverse,
    .tp_clear = (inquiry)core_clear,
    .tp_methods = core_methods,
    .tp_members = core_members,
    .tp_getset = core_getset,
};

/* -- the module ------------------------------------------------------------------------------ */

static int
intern(PyObject **where, const char *text)
{
    if (*where != NULL) {
        return 0; /* executed again (the module was imported again): the strings are kept */
    }
    *where = PyUnicode_InternFromString(text);
    return *where == NULL ? -1 : 0;
}

static int
lockrec_exec(PyObject *module)
{
    if (intern(&str_attach, "_attach") < 0 || intern(&str_locate, "locate") < 0 ||
        intern(&str_rec, "rec") < 0 || intern(&str_release, "release") < 0 ||
        intern(&str_block, "block") < 0 || intern(&str_timeout, "timeout") < 0) {
        return -1;
    }
    if (PyModule_AddType(module, &RecordsType) < 0 ||
        PyModule_AddType(module, &LockCoreType) < 0) {
        return -1;
    }
    PyObject *format = Py_BuildValue("(iiiiii)", RECORD_SIZE, ACQUIRED, RELEASED, RELEASE_FAILED,
                                     TRY, CORE_VERSION);
    if (format == NULL) {
        return -1;
    }
    int added = PyModule_AddObjectRef(module, "FORMAT", format);
    Py_DECREF(format);
    return added;
}

static PyModuleDef_Slot lockrec_slots[] = {
    {Py_mod_exec, lockrec_exec},
#ifdef Py_mod_multiple_interpreters
    /* Static types and strings: one interpreter only. */
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
#ifdef Py_mod_gil
    /* Relies on the GIL (see the top of this file); checked.py never imports it without one. */
    {Py_mod_gil, Py_MOD_GIL_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef lockrec_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pytest_mpcheck.locks._lockrec",
    .m_doc = "The hot path of pytest_mpcheck.locks.checked.CheckedLock, in C (optional).",
    .m_size = 0,
    .m_slots = lockrec_slots,
};

PyMODINIT_FUNC
PyInit__lockrec(void)
{
    return PyModuleDef_Init(&lockrec_module);
}
