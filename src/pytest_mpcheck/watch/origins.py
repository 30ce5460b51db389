"""Where each child of the pytest process was started.

While the plugin is active, the calls that create processes in the test process
(``multiprocessing.Process.start``, ``subprocess.Popen``, ``os.fork``, ``os.forkpty``,
``os.posix_spawn`` and ``os.posix_spawnp``) are wrapped so that each new pid is noted with the
``file:line`` of the user's code that called them, the object that owns the process, and the test or
fixture that was running. The wrappers prepare the record before the original call and only file it
under the new pid afterwards; they change nothing else. ``os.system``, which waits for its child
itself, is wrapped only to be counted among the calls running (:attr:`OriginRecorder.starting`).
"""

from __future__ import annotations

import _posixsubprocess
import dataclasses
import functools
import multiprocessing.process
import multiprocessing.util
import os
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

from pytest_mpcheck._os import callsite, procfs
from pytest_mpcheck.watch import tasknotes
from pytest_mpcheck.watch.forkthreads import ThreadedForks, ThreadSeen, is_alien

#: The scope of processes handed to the session: still held by a live object (a pool, an
#: executor) when their test ended, or started by one that was. Checked when the session ends.
HANDED_OVER = "<handed over to the session>"
#: The owner of a process started after one test and before the next (a hook, a fixture's
#: finalizer of no wider scope, a module imported as it was collected after a test ran).
BETWEEN_TESTS = "<between tests>"
#: The owner of a process started before the first test (a hook, a module as it was collected).
BEFORE_TESTS = "<collection>"
#: The owners of a process that no test or fixture started.
OUTSIDE_TESTS = frozenset({BEFORE_TESTS, BETWEEN_TESTS})
#: The owner of a process that the plugin starts itself (py-spy): not counted as started by tests.
PLUGIN_OWNER = "<mpcheck>"

#: The attribute of a process object, while it starts, that prepares its child for stack requests.
CHILD_SETUP_ATTRIBUTE = "_pytest_mpcheck_child_setup"

#: The clock that a process's start in ``/proc/<pid>/stat`` is read on (Linux); ``None`` elsewhere.
_BOOT_CLOCK: int | None = getattr(time, "CLOCK_BOOTTIME", None)


def _boot_ticks() -> int | None:
    """Now, in clock ticks since boot (rounded down), as a process's start is given."""
    if _BOOT_CLOCK is None:
        return None
    return int(time.clock_gettime(_BOOT_CLOCK) * procfs.CLOCK_TICKS)


#: From 3.12, ``os.fork`` and ``os.forkpty`` warn (``DeprecationWarning``) when the process has
#: other threads, and the warning names the Python frame that called them.
_FORK_WARNS = sys.version_info >= (3, 12)

#: The longest a process-creating call waits once the recorder is closed
#: (:meth:`OriginRecorder.close`): ``os._exit`` comes within seconds.
CLOSED_WAIT = 60.0

_CALLER_CODE: dict[tuple[str, int], CodeType] = {}
"""The code that :func:`_call_from` runs, per ``(file, line)``: compiled once per call site."""


def _call_from(caller: FrameType, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function``, called from a frame that the warnings machinery takes for ``caller``.

    A warning that a C function gives (the fork warning) is placed at the frame that called it:
    called from the wrapper, it would name this plugin, and a filter that names the caller's module
    (``multiprocessing.popen_fork``) or the once-per-line registry would no longer apply. The
    frame this runs has the caller's file, line and globals, and calls ``function`` directly.
    """
    filename, lineno = caller.f_code.co_filename, caller.f_lineno
    if not lineno:
        return function

    def call(*args: Any, **kwargs: Any) -> Any:
        code = _CALLER_CODE.get((filename, lineno))
        if code is None:
            # Blank lines put the call on the caller's line; the code names nothing of the
            # caller's globals, so nothing is read from or written to them but the warnings'
            # registry, as the direct call would.
            source = (
                "\n" * (lineno - 1)
                + "__mpcheck_function__(*__mpcheck_args__, **__mpcheck_kwargs__)"
            )
            code = _CALLER_CODE.setdefault((filename, lineno), compile(source, filename, "eval"))
        names = {
            "__mpcheck_function__": function,
            "__mpcheck_args__": args,
            "__mpcheck_kwargs__": kwargs,
        }
        return eval(code, caller.f_globals, names)  # the fixed code above, never input

    return call


@dataclass
class StartRecord:
    """One process started in the pytest process."""

    pid: int
    started_by: str
    site: str | None
    owner: str
    scope: object | None
    """The wider-scoped fixture (its definition) that started it, or ``None`` for a test."""
    create_time: float | None
    name: str | None = None
    handle: weakref.ref[Any] | None = None
    """The ``multiprocessing.Process`` or ``subprocess.Popen`` that owns it, while it lives."""
    helper: bool = False
    """multiprocessing's resource tracker or forkserver (a session helper, not the test's)."""
    exit_status: int | None = None
    """The exit status its process object read, kept when that object is collected (see
    :meth:`OriginRecorder.note`): a pool drops a dead worker's object before a test ends."""
    test_site: str | None = None
    """``file:line`` of the test module or ``conftest.py`` that led to the start, when it is not
    :attr:`site` (a library's line): directly, or by starting the thread that started it."""
    test_site_is_thread: bool = False
    """Whether :attr:`test_site` started the thread that started the process."""
    forked_here: bool = False
    """Forked by the pytest process itself, so its parent there will wait for it. ``False`` for
    a process that a forkserver forked for ``Process.start``: its ``Popen`` reads the exit status
    from the forkserver, so if it is orphaned (the forkserver died) nobody waits for it."""
    handed_on: bool = False
    """Its process ended and the kernel gave its pid to another (see
    :attr:`OriginRecorder.displaced`): what the watch found or ended under that pid since was
    the other process, never this one."""
    worker: bool = False
    """The worker of a ``Pool`` or a ``ProcessPoolExecutor``: it exits with 0 unless something
    went wrong (see :mod:`pytest_mpcheck.watch.tasknotes`)."""
    began: int | None = None
    """When the call that started it began, in clock ticks since boot (rounded down): no later
    than the process's own start (see :func:`pytest_mpcheck._os.procfs.start_ticks`)."""
    fed_queues: tuple[str, ...] = ()
    """The keys of the ``multiprocessing`` queues its process began to feed, as far as read
    (see :mod:`pytest_mpcheck.watch.queues`)."""

    def is_among(self, pids: Collection[int]) -> bool:
        """Whether ``pids`` (what the watch found or ended, by pid) names this record's process,
        not a later one that the kernel gave its pid to."""
        return self.pid in pids and not self.handed_on


#: The hook whose implementation calls a fixture's function: pytest's own, or that of a plugin
#: that replaces it. Its frame on a stack means that a fixture is being set up there, and its
#: argument ``fixturedef`` (the hook's, so every implementation's) says which.
_FIXTURE_SETUP_HOOK = "pytest_fixture_setup"

#: pytest's hooks that run a test's phases: a fixture's setup is always inside one of them, so
#: the walk stops at the first (the stack of a test that starts a process is a few frames deep
#: to there, and some sixty to its bottom).
_TEST_PHASE_HOOKS = frozenset(
    {"pytest_runtest_setup", "pytest_runtest_call", "pytest_pyfunc_call", "pytest_runtest_teardown"}
)


def fixture_in_setup(frame: FrameType | None) -> Any | None:
    """The definition (pytest's ``FixtureDef``) of the wider-scoped fixture (not function) whose
    setup runs ``frame``, directly or through the calls it made; ``None``.

    Read from the stack when a process or thread starts, rather than kept up to date by a hook
    around every fixture's setup: the test process only pays for it when it starts something.
    """
    while frame is not None:
        name = frame.f_code.co_name
        if name == _FIXTURE_SETUP_HOOK:
            fixturedef = frame.f_locals.get("fixturedef")
            if getattr(fixturedef, "scope", "function") != "function":
                return fixturedef
        elif name in _TEST_PHASE_HOOKS:
            return None
        frame = frame.f_back
    return None


def _keep_exit_status(record: StartRecord, popen: Any, _gone: object = None) -> None:
    """The process object of ``record`` is being collected: keep what its popen read."""
    status = getattr(popen, "returncode", None)
    if isinstance(status, int):
        record.exit_status = status


class OriginRecorder:
    """Notes every process the pytest process starts; see the module docstring."""

    def __init__(self, rootdir: Path) -> None:
        self._root_prefix = str(rootdir).rstrip(os.sep) + os.sep
        self.records: dict[int, StartRecord] = {}
        self.displaced: list[StartRecord] = []
        """Records whose pid the kernel gave to a newer process before the watch looked: the
        processes they name ended; the watch reads their ends (``ProcessWatch._forget_gone``)."""
        self.started = 0
        self._owner = BEFORE_TESTS
        self._pid = os.getpid()
        self._undo: list[Callable[[], None]] = []
        self._unwrapped_families = list(self.PROCESS_FAMILIES)
        """The families of :attr:`PROCESS_FAMILIES` whose process class is not wrapped yet."""
        self._count_lock = threading.Lock()
        self.starting = 0
        """How many process-creating calls are running now, in all threads (they nest).

        Changed under a lock (two threads may start processes at once); read without one by
        the orphan reaper, which runs in a signal handler and must never wait.
        """
        self.generation = 0
        """Goes up with every process noted: tells the watch that its last look is stale."""
        self.deferred: Callable[[], object] | None = None
        """Work to do once no such call runs (set by the orphan reaper)."""
        self._thread_owners: weakref.WeakKeyDictionary[
            threading.Thread, tuple[str, object | None]
        ] = weakref.WeakKeyDictionary()
        """Who was running when each thread was started (see :meth:`_prepare`)."""
        self._executor_owners: weakref.WeakKeyDictionary[Any, tuple[str, object | None]] = (
            weakref.WeakKeyDictionary()
        )
        """Who was running when each process pool executor was made (see :meth:`_prepare`)."""
        self._unwrapped_executors = list(self.EXECUTOR_CLASSES)
        """The classes of :attr:`EXECUTOR_CLASSES` whose ``__init__`` is not wrapped yet."""
        self.finishing: str | None = None
        """The test whose leftovers the watch is looking for now (after its teardown): what its
        own threads start meanwhile is still its own, not handed to the session."""
        self._starting_threads: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
        """Threads started under the plugin that started processes for their own owner (a
        pool's worker handler, which replaces each worker that ends)."""
        self._thread_sites: weakref.WeakKeyDictionary[threading.Thread, str | None] = (
            weakref.WeakKeyDictionary()
        )
        """Where each thread was started: named when a fork happens while it runs."""
        self._thread_test_sites: weakref.WeakKeyDictionary[threading.Thread, str] = (
            weakref.WeakKeyDictionary()
        )
        """The line of a test module or conftest.py that led to each thread's start (directly,
        or through the thread that started it)."""
        self.child_setup: Callable[[Any, Any], object | None] | None = None
        """What to put in each process object that ``Process.start`` starts by spawn or
        forkserver, so that the child is prepared (see :mod:`pytest_mpcheck.watch.preparation`).
        Called with the process object and its task queues (:func:`tasknotes.worker_queues`)."""
        self.fork_setup: Callable[[Any], Callable[[], None] | None] | None = None
        """Called before each fork that ``Process.start`` makes, with the task queues of the
        process (:func:`tasknotes.worker_queues`): what its at-fork callback needs to know of
        it; returns what to call once started."""
        self.on_fixture_owner: Callable[[], None] | None = None
        """Called each time something is attributed to a wider-scoped fixture: the session
        then watches for that fixture's finalization."""
        self.threaded_forks = ThreadedForks()
        """Forks made while other threads ran, since the last test ended."""
        self._thread = threading.local()
        """Per thread: ``prepared``, the record of the process-creating call this thread is
        making (see :meth:`_prepare`), and ``noted``, the pids noted since its outermost call
        began. Per thread, so that two threads starting processes at once keep their sites."""
        self._closed_by: int | None = None
        """The thread that closed the recorder (see :meth:`close`), once one did."""

    # -- who is running -------------------------------------------------------------------------

    def thread_start(self, thread: threading.Thread) -> tuple[str | None, str | None]:
        """Where ``thread`` was started (``file:line`` of the user's code) and by whom (a test's
        node id, or a wider-scoped fixture), as far as the recorder saw it start."""
        return self._thread_sites.get(thread), self._thread_owners.get(thread, (None, None))[0]

    def current_owner(self, frame: FrameType | None) -> tuple[str, object | None]:
        """Who is running the code of ``frame`` (and its callers): the wider-scoped fixture
        whose setup is on the stack, with its definition, else the test (see
        :meth:`set_owner`), with ``None``."""
        fixturedef = fixture_in_setup(frame)
        if fixturedef is not None:
            if self.on_fixture_owner is not None:
                # Runs inside the user's call (a process or thread starting): never raise there.
                with suppress(Exception):
                    self.on_fixture_owner()
            return f"{fixturedef.scope}-scoped fixture {fixturedef.argname!r}", fixturedef
        return self._owner, None

    def owner_of(self, pid: int) -> tuple[str, object | None]:
        """Who ``pid`` belongs to (owner, wider-scoped fixture or ``None``); for the pytest
        process itself, who is running now (see :meth:`current_owner`)."""
        record = self.records.get(pid) if pid != self._pid else None
        if record is not None:
            return record.owner, record.scope
        return self.current_owner(sys._getframe(1))

    def starts_for(self, owner: str) -> bool:
        """Whether a thread that ``owner`` (a test) started, and that has started processes for
        it, still runs: an open pool's worker handler starts a worker again whenever one ends."""
        for thread in list(self._starting_threads):  # other threads may add to it
            thread_owner = self._thread_owners.get(thread)
            if thread_owner is not None and thread_owner[0] == owner and thread.is_alive():
                return True
        return False

    def set_owner(self, owner: str) -> None:
        """Attribute processes started from now on to ``owner`` (a test's node id), but those
        that a wider-scoped fixture's setup starts (see :meth:`current_owner`)."""
        self._owner = owner

    def rebase(self) -> None:
        """Record from this process: a fork of the pytest process now runs the tests."""
        self._pid = os.getpid()
        self.records.clear()
        self.displaced = []
        # The calls that were running at the fork were the parent's, its own among them.
        self._count_lock = threading.Lock()
        self.starting = 0
        self.deferred = None
        self._thread = threading.local()

    # -- recording ------------------------------------------------------------------------------

    def close(self) -> None:
        """Let no new process be started: the pytest process ends with ``os._exit`` in a moment
        (pytest-timeout's ``thread`` method), and its processes are being ended first.

        From now on a process-creating call that begins, in any other thread, waits for that
        exit instead of starting a process that nothing would end: a ``Pool``'s worker handler
        replaces each worker as it is ended. A call under way finishes (its process is then
        found and ended). The wait is bounded all the same (:data:`CLOSED_WAIT`).
        """
        self._closed_by = threading.get_ident()

    def _wait_if_closed(self) -> None:
        closer = self._closed_by
        if closer is not None and closer != threading.get_ident():
            # os._exit ends this wait; the bound only keeps it from lasting for ever should that
            # exit not come.
            threading.Event().wait(CLOSED_WAIT)

    def _prepare(self, label: str) -> StartRecord | None:
        """Before a process-creating call: what is known already (where, who, by which call).

        The pid comes after, and right after a fork every page the parent writes is copied for
        the child: the frame walk and the record are done before it. A call made inside another
        (``os.fork`` inside ``Process.start``) shares the outer call's record, which names it.
        Returns the record that was being prepared before, to put back afterwards.
        """
        if os.getpid() != self._pid:
            return None  # a forked child inherited the wrappers; only the pytest process records
        local = self._thread
        previous: StartRecord | None = getattr(local, "prepared", None)
        if previous is None:
            self._wait_if_closed()  # an outermost call only: one under way must finish
            thread = threading.current_thread()
            frame = sys._getframe(1)
            owner, scope = self.current_owner(frame)
            # An executor older than this test (a fixture's, which starts its workers on its
            # first submit()), or a thread older than it (a pool's worker handler), starts for
            # whoever made it: a fixture's scope, or the session once that test is over.
            started_by = self._executor_starting(frame) if self._executor_owners else None
            if started_by is None:
                started_by = self._thread_owners.get(thread)
                if started_by is not None:
                    self._starting_threads.add(thread)
            if started_by is not None and started_by[0] != owner:
                owner, scope = started_by
                if scope is None and owner != self.finishing:
                    scope = HANDED_OVER
            if getattr(callsite.PLUGIN_PROGRAM, "running", False):
                # py-spy, reading a stack for a report: the plugin's, counted for no test.
                owner, scope = PLUGIN_OWNER, None
            site = callsite.user_site(frame, self._root_prefix)
            test_site = callsite.test_site(frame, self._root_prefix)
            from_thread = False
            if test_site is None:
                # A library's own thread (a pool's worker handler): the test line that started
                # that thread led to this process.
                test_site = self._thread_test_sites.get(thread)
                from_thread = test_site is not None
            local.prepared = StartRecord(
                pid=0,
                started_by=label,
                site=site,
                owner=owner,
                scope=scope,
                create_time=None,
                test_site=test_site if test_site != site else None,
                test_site_is_thread=from_thread,
                began=_boot_ticks(),
            )
            local.noted = set()
        with self._count_lock:
            self.starting += 1
        return previous

    def _executor_starting(self, frame: FrameType | None) -> tuple[str, object | None] | None:
        """Who made the executor whose method is starting a process, if one is: a method of it
        (``_spawn_process``, ``_adjust_process_count``) is among the few frames above the start
        call, ``frame`` (the wrapper's). ``None`` when no such executor's making was seen."""
        owners = self._executor_owners
        for _ in range(4):  # the wrapper, Process.start's caller, and up to two callers of it
            if frame is None:
                break
            code = frame.f_code
            if code.co_argcount and code.co_varnames[0] == "self":
                try:
                    made_by = owners.get(frame.f_locals["self"])
                except (KeyError, TypeError):  # no weak reference to it: no executor
                    made_by = None
                if made_by is not None:
                    return made_by
            frame = frame.f_back
        return None

    def _finish(self, previous: StartRecord | None) -> None:
        """After the call (see :meth:`_prepare`).

        Nothing in a forked child, which runs this right after ``os.fork`` returns there: the
        count is the parent's (and its lock may have been held by another of the parent's
        threads, which the child does not have), and each page it touched would be copied.
        """
        if os.getpid() != self._pid:
            return
        self._thread.prepared = previous
        with self._count_lock:
            self.starting -= 1
        self._run_deferred()

    def note(
        self,
        pid: int,
        handle: object | None = None,
        forked_here: bool = False,
        worker: bool = False,
    ) -> None:
        """Record that ``pid`` was just started by the call being made now.

        ``forked_here``: the pid came from a fork made by this process (``os.fork``,
        ``fork_exec``), not from a forkserver (see :attr:`StartRecord.forked_here`). ``worker``:
        ``handle`` is a pool's or an executor's worker.

        This runs right after a fork: it only files the record :meth:`_prepare` made. The create
        time, which guards against pid reuse, is read later (:meth:`fill_create_times`): the child
        is ours, so its pid is not handed to anyone else before it is reaped.
        """
        record: StartRecord | None = getattr(self._thread, "prepared", None)
        if os.getpid() != self._pid or pid <= 0 or record is None:
            return  # a forked child inherited the wrappers; only the pytest process records
        self.generation += 1
        noted: set[int] = self._thread.noted
        if pid not in noted or pid not in self.records:
            # A pid noted by an earlier call belonged to a process that was reaped since.
            if record.pid and record.pid != pid:
                # One call started two processes (Process.start that first started the
                # forkserver or the resource tracker): each gets its own record.
                record = dataclasses.replace(record, handle=None, name=None)
            record.pid = pid
            record.forked_here = forked_here
            older = self.records.get(pid)
            if older is not None and older is not record:
                # The pid came round again (the kernel hands out a freed pid once it has gone
                # through all the others): the process it named was reaped since. What each
                # one writes is told apart by its start, known for the newcomer from now on.
                self._displace(older)
                if record.create_time is None:
                    record.create_time = procfs.create_time(pid)
            self.records[pid] = record
            noted.add(pid)
            if not record.owner.startswith("<"):  # counts what tests and fixtures start
                self.started += 1
        else:
            record = self.records[pid]
            record.forked_here = record.forked_here or forked_here
        if handle is not None:
            popen = getattr(handle, "_popen", None)  # multiprocessing's: it holds the status
            if popen is None:
                record.handle = weakref.ref(handle)
            else:
                # When the process object is collected, keep what its popen read (held only as
                # long as the process object holds it anyway).
                record.handle = weakref.ref(
                    handle, functools.partial(_keep_exit_status, record, popen)
                )
            name = getattr(handle, "name", None)
            if isinstance(name, str):
                record.name = name
            if worker:
                record.worker = True
                if record.create_time is None:
                    # A pool's or executor's worker names its task note by its start (see
                    # tasknotes): the note of one that dies before the test ends is found by it.
                    record.create_time = procfs.create_time(pid)

    def count_as_helper(self, pid: int) -> None:
        """``pid`` turned out to be a session helper: not a process the test started itself."""
        record = self.records.get(pid)
        if record is not None and not record.helper:
            record.helper = True
            if not record.owner.startswith("<"):
                self.started -= 1

    def drop_handed_on(self, tree: Mapping[int, int]) -> None:
        """Take the records of this process's own children whose pid ``tree`` (a look at the
        descendants: ``{pid: parent}``) gives another parent: the child ended and the kernel
        handed its pid to a descendant that nothing noted (a child's own fork). The records go
        to :attr:`displaced`, where the watch reads how their processes ended, instead of being
        taken for the newcomer's (its name and start site, its create time).

        The parent is read again before a record is taken: a child started since the look may
        have been given the pid of a descendant that ended meanwhile.
        """
        for pid, record in list(self.records.items()):  # other threads may add records
            parent = tree.get(pid)
            if (
                parent is not None
                and parent != self._pid
                and record.forked_here
                and procfs.parent(pid) not in (None, self._pid)
                and self.records.get(pid) is record
            ):
                del self.records[pid]
                self._displace(record)

    def _displace(self, record: StartRecord) -> None:
        """``record``'s pid now names another process: keep the record for the watch to read
        how its process ended (see :attr:`displaced`)."""
        record.handed_on = True
        self.displaced.append(record)

    def fill_create_times(self, alive: frozenset[int]) -> None:
        """Read the create time of the recorded processes in ``alive`` that have none yet."""
        for pid, record in list(self.records.items()):  # other threads may add records
            if record.create_time is None and pid in alive:
                record.create_time = procfs.create_time(pid)

    def forget(self, pids: Iterable[int]) -> None:
        """Drop the records of processes that are gone."""
        for pid in pids:
            self.records.pop(pid, None)

    # -- installing the wrappers ----------------------------------------------------------------

    def _starting(self, original: Callable[..., Any], label: str, *args: Any, **kwargs: Any) -> Any:
        """Call a process-creating function and note the pid it made.

        While the call runs, :attr:`starting` is non-zero: a ``SIGCHLD`` that arrives before the
        new pid is noted (a child that exits at once) must not make the orphan reaper take it.
        """
        previous = self._prepare(label)
        try:
            result = original(*args, **kwargs)
            pid = result[0] if isinstance(result, tuple) else result
            if isinstance(pid, int) and pid > 0:
                self.note(pid, forked_here=True)
            return result
        finally:
            self._finish(previous)

    def _waiting_for_own_child(
        self, original: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        """Call a function that starts a process and waits for it itself (``os.system``).

        Nothing is noted (it returns a wait status, not a pid, and its child is gone when it
        returns), but while it runs :attr:`starting` is non-zero: the orphan reaper, in a
        signal handler or in another thread, must not take the status that it waits for.
        """
        if os.getpid() != self._pid:
            return original(*args, **kwargs)  # a forked child: the count is the parent's
        self._wait_if_closed()
        with self._count_lock:
            self.starting += 1
        try:
            return original(*args, **kwargs)
        finally:
            with self._count_lock:
                self.starting -= 1
            self._run_deferred()

    def _forking_with_threads(self, label: str) -> None:
        """``os.fork`` is called while another thread is alive: note which, and where from."""
        if os.getpid() != self._pid:
            return
        current = threading.current_thread()
        main = threading.main_thread()
        threads = [
            ThreadSeen(
                ident=thread.ident,
                name=thread.name,
                daemon=thread.daemon,
                site=self._thread_sites.get(thread),
                owner=self._thread_owners.get(thread, (None, None))[0],
                main=thread is main,
            )
            for thread in threading.enumerate()
            if thread is not current and not is_alien(thread)
        ]
        if not threads:
            return
        outer: StartRecord | None = getattr(self._thread, "prepared", None)
        if outer is not None:  # os.fork inside Process.start: the record names the call
            site, call, owner = outer.site, outer.started_by, outer.owner
        else:
            frame = sys._getframe(2)
            site = callsite.user_site(frame, self._root_prefix)
            call, owner = label, self.current_owner(frame)[0]
        forking: str | None = None
        if site is None and self._thread_sites.get(current):
            # No user code in this thread's calls (a pool's worker handler replacing a worker):
            # the thread, and where it was started, say where the fork comes from.
            site, forking = self._thread_sites[current], current.name
        self.threaded_forks.note(site, call, owner, threads, forking)

    def _run_deferred(self) -> None:
        if not self.starting and self.deferred is not None and os.getpid() == self._pid:
            deferred, self.deferred = self.deferred, None
            deferred()

    def install(self) -> None:
        """Wrap the process-creating calls; undone by :meth:`uninstall`."""
        recorder = self

        def wrap_pid_returning(
            module: Any, attribute: str, label: str, forks: bool = False
        ) -> None:
            original = getattr(module, attribute, None)
            if original is None:
                return

            @functools.wraps(original)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                # A fork without exec copies one thread only (see forkthreads); fork_exec and
                # posix_spawn exec at once and are safe.
                if forks and threading.active_count() > 1:
                    with suppress(Exception):  # noting must never keep the fork from happening
                        recorder._forking_with_threads(label)
                called = original
                if forks and _FORK_WARNS:
                    with suppress(ValueError):  # no Python caller (a thread C code started)
                        called = _call_from(sys._getframe(1), original)
                return recorder._starting(called, label, *args, **kwargs)

            setattr(module, attribute, wrapper)
            self._undo.append(functools.partial(setattr, module, attribute, original))

        # The one call under subprocess and every spawnv_passfds (multiprocessing's and those
        # of its forks: multiprocess, billiard, loky), whichever module calls it.
        wrap_pid_returning(_posixsubprocess, "fork_exec", "_posixsubprocess.fork_exec")
        wrap_pid_returning(subprocess, "_fork_exec", "_posixsubprocess.fork_exec")  # 3.11+
        wrap_pid_returning(os, "fork", "os.fork", forks=True)
        wrap_pid_returning(os, "forkpty", "os.forkpty", forks=True)
        wrap_pid_returning(os, "posix_spawn", "os.posix_spawn")
        wrap_pid_returning(os, "posix_spawnp", "os.posix_spawnp")
        # multiprocessing's spawn and forkserver methods, its resource tracker and forkserver.
        wrap_pid_returning(multiprocessing.util, "spawnv_passfds", "multiprocessing spawn")
        # system(3) forks and waits in C, past every wrapper above. The other ways the standard
        # library starts a process come through them: os.popen (subprocess), os.spawn* (os.fork,
        # looked up in os's globals when called), pty.fork (os.forkpty or os.fork).
        original_system = os.system

        @functools.wraps(original_system)
        def system(*args: Any, **kwargs: Any) -> Any:
            return recorder._waiting_for_own_child(original_system, *args, **kwargs)

        os.system = system
        self._undo.append(functools.partial(setattr, os, "system", original_system))

        original_thread_start = threading.Thread.start

        @functools.wraps(original_thread_start)
        def start_thread(thread: threading.Thread) -> None:
            if os.getpid() == recorder._pid:
                test_site = None
                try:
                    frame = sys._getframe(1)
                    recorder._thread_owners[thread] = recorder.current_owner(frame)
                    site = callsite.user_site(frame, recorder._root_prefix)
                    test_site = callsite.test_site(frame, recorder._root_prefix)
                    if test_site is None:
                        test_site = recorder._thread_test_sites.get(threading.current_thread())
                except Exception:  # never keep the thread from starting
                    site = None
                recorder._thread_sites[thread] = site
                if test_site is not None:
                    recorder._thread_test_sites[thread] = test_site
            original_thread_start(thread)

        threading.Thread.start = start_thread  # type: ignore[method-assign,assignment]
        self._undo.append(
            functools.partial(setattr, threading.Thread, "start", original_thread_start)
        )

        self._wrap_method = wrap_method = self._method_wrapper()
        self.wrap_process_families()
        wrap_method(subprocess.Popen, "__init__", "subprocess.Popen")

    #: Modules that define a ``BaseProcess`` of their own: multiprocessing and its forks.
    PROCESS_FAMILIES = ("multiprocessing", "multiprocess", "billiard")

    #: Process pool executors that start their workers on demand (at a ``submit()``, perhaps in
    #: a later test than the one that made them): ``(module, class)``.
    EXECUTOR_CLASSES = (
        ("concurrent.futures.process", "ProcessPoolExecutor"),
        ("loky.process_executor", "ProcessPoolExecutor"),
    )

    def wrap_process_families(self) -> None:
        """Wrap ``BaseProcess.start`` of each multiprocessing family imported by now, and the
        ``__init__`` of each executor class of :attr:`EXECUTOR_CLASSES`.

        Called again before each test: a suite may import ``multiprocess`` or ``billiard`` only
        when its modules are collected. A dictionary look-up per family not wrapped yet.
        """
        for module_name, class_name in tuple(self._unwrapped_executors):
            cls = getattr(sys.modules.get(module_name), class_name, None)
            if cls is not None:
                self._unwrapped_executors.remove((module_name, class_name))
                self._note_executors_made(cls)
        for family in tuple(self._unwrapped_families):
            module = sys.modules.get(family + ".process")
            cls = getattr(module, "BaseProcess", None)
            if cls is None or not hasattr(cls, "start"):
                continue
            self._unwrapped_families.remove(family)
            if family != "multiprocessing" and getattr(cls.start, "__wrapped__", None):
                continue  # the same class under another name
            self._wrap_method(cls, "start", f"{family}.Process.start")

    def _note_executors_made(self, cls: Any) -> None:
        """Note who is running (see :meth:`current_owner`) when each executor of ``cls`` is made:
        the workers it starts later are theirs."""
        original = cls.__init__
        recorder = self

        @functools.wraps(original)
        def __init__(executor: Any, *args: Any, **kwargs: Any) -> None:
            original(executor, *args, **kwargs)
            if os.getpid() == recorder._pid:
                with suppress(Exception):  # the executor is made whatever befalls the note
                    owner = recorder.current_owner(sys._getframe(1))
                    recorder._executor_owners[executor] = owner

        setattr(cls, "__init__", __init__)  # noqa: B010
        self._undo.append(functools.partial(setattr, cls, "__init__", original))

    def _method_wrapper(self) -> Callable[[Any, str, str], None]:
        recorder = self

        def wrap_method(cls: Any, attribute: str, label: str) -> None:
            original = getattr(cls, attribute)
            is_process_start = attribute == "start"

            @functools.wraps(original)
            def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
                previous = recorder._prepare(label)
                # Asked before the start, which drops the process's target and arguments.
                queues = tasknotes.worker_queues(self) if is_process_start else None
                forks = getattr(self, "_start_method", None) == "fork"
                setup_for = recorder.child_setup
                # Pickled with the process object for a spawn or forkserver child; a fork child
                # is prepared by the at-fork callback instead, and never sees it.
                setup = (
                    setup_for(self, queues)
                    if is_process_start and setup_for is not None and not forks
                    else None
                )
                prepare = setup is not None
                if prepare:
                    vars(self)[CHILD_SETUP_ATTRIBUTE] = setup
                fork_setup = recorder.fork_setup
                started = (
                    fork_setup(queues)
                    if is_process_start and fork_setup is not None and forks
                    else None
                )
                try:
                    result = original(self, *args, **kwargs)
                    if isinstance(self.pid, int):
                        recorder.note(self.pid, handle=self, worker=queues is not None)
                    return result
                finally:
                    if started is not None:
                        started()
                    if prepare:
                        vars(self).pop(CHILD_SETUP_ATTRIBUTE, None)
                    recorder._finish(previous)

            setattr(cls, attribute, wrapper)
            recorder._undo.append(functools.partial(setattr, cls, attribute, original))

        return wrap_method

    def uninstall(self) -> None:
        """Put the original calls back (in reverse order of wrapping)."""
        while self._undo:
            self._undo.pop()()
        self._unwrapped_families = list(self.PROCESS_FAMILIES)
