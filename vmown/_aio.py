# vmown.aio: an asyncio event loop that owns a VM, and moves to another
# thread while a callout blocks.
#
# EventLoop is asyncio's Unix SelectorEventLoop (signal handlers, subprocesses
# and Unix sockets come with it) whose iterations run on whichever thread owns
# a VM of the loop's own.  The thread that calls run_forever (the *home*
# thread) owns the VM from the start; a coroutine calls a vmown.threaded (or
# generated) C function inline: the callout disowns, calls with the GIL
# released, and owns again, as a step of vmown.run does
# (docs/ARCHITECTURE.md, "One call, three paths").  While the loop runs, the
# core's heartbeat and worker pool run too, as in vmown.run: a callout that
# stays out a whole tick while the loop needs a thread is revoked, a parked
# worker is given the VM, and the worker runs the loop's other callbacks and
# polls its selector until the callout comes back.
#
# The unit that moves is the loop, not the task.  The coroutine whose step
# blocks has its frames on the blocked thread's C stack; that step finishes
# there.  Every other callback runs on the thread that owns the VM at the
# time.  A thread gives the VM up only
#   - between callbacks, when a thread is queued for the VM (a callout came
#     back): it parks and the VM passes to the head of the queue;
#   - around the selector's wait (the poller), so that a callout coming back
#     meanwhile owns the VM with its CAS and nobody has to wake the poller;
#   - in a callout, in the middle of a callback.
# Every other thread that wants the VM queues for it (the core's wait queue)
# or is parked on the idle stack.
#
# What asyncio keeps per thread, and what follows the VM.
#   - The running loop (asyncio.events._set_running_loop, per thread) and the
#     async generator hooks (sys.set_asyncgen_hooks, per thread): set on the
#     home thread by run_forever, and on a worker for as long as it serves
#     the loop.
#   - loop._thread_id (debug mode's thread check): set to the owner's thread
#     each time the VM changes thread.
#   - The current task.  On 3.11-3.13 the C accelerator keeps one dict
#     {loop: task} and refuses to enter a second task for a loop.  A thread
#     that leaves in a callout leaves its step's task current; the next
#     thread that owns the VM (_settle) removes it and keeps it with the
#     thread that left (_LoopThread.task); that thread, when its callout
#     comes back to a VM somebody else owned meanwhile, puts it back
#     (vmown_bind_resume: the callout path calls _settle before the call
#     returns).  So the dict always names the task of the step running on the
#     owner, and asyncio.current_task() on a thread that is out names nothing
#     on its own, as the rule asks ("current on its own thread only").
#     3.14 keeps the current task per thread and needs none of this
#     (_SWAP_TASKS).
#
# Invariant: the VM's owner is the only thread that touches the loop's
# structures (ready queue, timers, selector registrations, the fields below)
# -- except call_soon_threadsafe, which asyncio already makes safe from any
# thread (a deque append and a write to the self-pipe), and the poller, which
# waits in the kernel's epoll object with the VM released (epoll's own
# locking).  With the default selector the poller's callout is the bare
# epoll_wait, and the events are matched to their registrations once it owns
# the VM again (_ready_events); with any other selector the callout is its
# select(), which reads the registrations during the wait, and what it read
# is checked against them once the poller owns the VM again (E8).
#
# I/O events go straight to the ready queue.  asyncio's iteration turns the
# epoll object's (fd, events) pairs into (key, mask) pairs (the selector's
# select) and then into ready handles (_process_events); with the default
# selector this loop does both in one pass over the pairs
# (_ready_events), with the same outcome, handle for handle, and a little
# less work per event than the default loop.  Another selector, or a
# _process_events of a subclass or put on the loop (as asyncio's own tests
# do), takes asyncio's two steps; the choice is made at the start of each
# run (_fuse_events).
#
# Races (docs/ARCHITECTURE.md indexes them; tests/test_aio.py forces them):
# E1. A callout comes back while the poller waits in the selector.
#       P: publish, release (VM unowned), epoll_wait     T: callout back: own
#     P released before waiting, so T's CAS wins; nothing has to wake P.  T
#     runs the loop's callbacks; with nothing ready and P polling, T parks.
#     P, back with events, owns (queueing behind T if T still owns) and
#     processes them then.  As vmown.run's idle poller (N2, N3).
# E2. Two threads take the current task's place in turn.
#       A: step of S1 in a callout            B: owns: _settle: S1 -> A.task
#       B: step of S2 in a callout            A: back, hook: _settle: S2 ->
#                                                B.task, enter S1
#     _settle runs on every thread that comes to own the VM, before it runs
#     any callback or continues its step, and only there is the dict changed
#     outside asyncio's own enter/leave; the holder (_holder) is the one
#     thread whose step the dict may name.
# E3. The loop stops while other threads are out in callouts, or polling.
#       H (home): stop() seen: park until none is out   W: back from its
#                                                         callout: ...
#       W: next iteration: stopping: unpark H, park.  H parks while owning
#     the VM (one step under the lock), so W's unpark finds H on the idle
#     stack, or H owns and has not looked yet; a poller is woken through the
#     self-pipe (H itself may be the poller).  A worker's poll that returns
#     into a stopped loop leaves its events for the next run (the selector is
#     level-triggered): the loop's last iteration is the one that stopped it,
#     as in asyncio's loop.  run_forever returns only when no callback is in
#     flight on another thread and nobody polls: nothing of the loop is left
#     running.
# E4. A timer is added while another thread polls with a later timeout.
#       P: epoll_wait(until t1)     T: call_at(t0 < t1): publish t0; park
#     The heartbeat sees the VM unowned with a due timer and gives a parked
#     worker the VM within a tick (P8 in vmown/_scheduler.py).
#
# E5. A burst of callbacks that each block, and a timer.
#       A: callback 1 blocks      W1 (takes over): callback 2 blocks
#       W2 (takes over): ...      the ticker's timer is due meanwhile
#     asyncio appends due timers behind the ready callbacks; a burst of N
#     callbacks that each block would make the timer wait for N takeovers.
#     An iteration that follows a takeover puts the due timers first.  Only
#     a takeover changes the order, so a loop whose callouts never block
#     keeps asyncio's order exactly.
#
# E6. A timer nobody polls for, and every thread parked.
#       T: nothing ready, P polls with a later timeout (or none): park
#     The heartbeat sleeps after a few quiet ticks and would not see the
#     timer fall due; so the thread that parks while a timer is published
#     and unwatched parks with it as its timeout (one watcher per deadline,
#     as vmown.run's timer watcher, P8), wakes, owns, and runs it.  If the
#     heartbeat activates another thread first, the watcher queues, is
#     handed the VM at a scheduling point, finds the timer run, and parks.
#
# E7. The owner has callbacks ready while another thread polls.
#       P: epoll_wait / poll (the VM released)   T: ready callbacks: select(0)?
#     T does not look at the selector: a poll(2) object refuses a second
#     caller ("concurrent poll() invocation"), and epoll would report the
#     same level-triggered events to both.  What P collects it processes
#     once it owns the VM (E1).
#
# E8. A registration changes while the poller has its events but not the VM.
#       P: epoll_wait returns fd's event; queues for the VM
#       T (owner): remove_reader(fd), or a new reader for fd; runs on; parks
#       P: owns: processes fd's event
#     The reader T removed must not run, and the reader T added must stay:
#     replacing a reader cancels the old handle, and asyncio's
#     _process_events unregisters the fd of a cancelled reader it is given.
#     P matches an event to its registration only once it owns the VM: the default selector's events
#     are raw (fd, events) pairs looked up then (_ready_events); another
#     selector's (key, mask) pairs, whose keys it looked up during the wait,
#     are kept only if the key is still the one registered for the fd.  An
#     event dropped for a replaced key is reported again by the next poll
#     (the selectors are level-triggered).
#
# Rejected designs (docs/design-log.md, "asyncio loop"): moving the blocked
# task instead of the loop (its frames are on the blocked C stack); one loop
# per worker (futures belong to one loop); calling run_forever on a worker
# (it would refuse a running loop); a lock around the loop's structures
# (ownership excludes every other thread already).

from __future__ import annotations

import asyncio
import heapq
import math
import select
import selectors
import sys
import threading
from asyncio import base_events
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from ._callout import threaded
from ._errors import BrokenError, VmownError, check, error, vm_error
from ._native import ffi, lib
from ._ownership import Ownership
from . import _scheduler

T = TypeVar("T")

_Base: type[asyncio.AbstractEventLoop] = asyncio.SelectorEventLoop

# 3.14 keeps the current task per thread: nothing to move.
_SWAP_TASKS = sys.version_info < (3, 14)
_current_tasks: dict[Any, Any] = getattr(asyncio.tasks, "_current_tasks", {})
_enter_task = asyncio.tasks._enter_task
_leave_task = asyncio.tasks._leave_task

_park_c = lib.vmown_park
_own_wait = lib.vmown_own_wait
_disown = lib.vmown_disown
_set_work = lib.vmown_set_work
_EINTR = lib.VMOWN_EINTR
_ETIMEDOUT = lib.VMOWN_ETIMEDOUT
_INTERRUPTIBLE = lib.VMOWN_WAIT_INTERRUPTIBLE
_WORK_RUNNABLE = lib.VMOWN_WORK_RUNNABLE
# A selector rounds its timeout up to whole milliseconds (epoll, poll): a
# poller waiting for a timer wakes up to this much after it.  Timers within
# it are the poller's own.
_POLL_SLACK = 1e-3
_EVENT_READ, _EVENT_WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
_NOT_EPOLLIN, _NOT_EPOLLOUT = ~select.EPOLLIN, ~select.EPOLLOUT


class _LoopThread:
    """A thread serving a loop: the home thread, or a pooled worker."""

    __slots__ = ("slot", "ident", "home", "out", "task")

    def __init__(self, slot: int, home: bool) -> None:
        self.slot = slot
        self.ident = threading.get_ident()
        self.home = home
        # Invariant: `out` is True while the thread is in a callout in the
        # middle of a callback and another thread has owned the VM since it
        # left (it is counted in EventLoop._out); `task` is then the task its
        # step left current (None for a plain callback).  Both are written
        # by the owner only.
        self.out = False
        self.task: Any = None


class _Here(threading.local):
    thread: _LoopThread | None = None


_here = _Here()


class _LoopState:
    """What the loop keeps beside asyncio's own fields (EventLoop._vm)."""

    __slots__ = (
        "ownership", "cb", "hz", "max_threads", "idle_timeout_ns", "waiters", "work", "select", "select_of",
        "epoll", "epoll_wait",
        "self_handle", "pool_handle", "running", "closing", "home", "holder", "out", "polling",
        "poll_until", "watched", "timer", "fatal", "moved", "moves",
    )  # fmt: skip

    def __init__(self, loop: EventLoop, hz: int, max_threads: int, idle_timeout_ns: int) -> None:
        self.ownership = Ownership(slots=max_threads + _scheduler._SLOT_MARGIN)
        cb = self.ownership._cb
        self.cb = cb
        self.hz = hz
        self.max_threads = max_threads
        self.idle_timeout_ns = idle_timeout_ns
        # The waiter count, read in place between callbacks (a plain load),
        # and the work words the heartbeat reads (_publish).  The loop leaves
        # [_WORK_TAKEN] alone: the heartbeat reads it to decide on servers,
        # which the loop turns off (_start_threads).
        self.waiters = memoryview(ffi.buffer(lib.vmown_waiters_word(cb), 4)).cast("I")
        self.work = memoryview(ffi.buffer(lib.vmown_work_words(cb), 16)).cast("Q")
        # The selector's wait as a callout, and the selector it waits in
        # (_poll makes it again for a selector put on the loop since).
        self.select: Callable[..., Any] = threaded(loop._selector.select)
        self.select_of: Any = loop._selector
        # The default selector while a run takes its events in one pass
        # (_ready_events; set by run_forever), else None; and its epoll
        # object's wait as a callout.
        self.epoll: Any = None
        self.epoll_wait: Callable[..., Any] | None = None
        # For the callout path's resume hook and the pool's entry; dropped at close().
        self.self_handle: Any = ffi.new_handle(loop)
        self.pool_handle: Any = ffi.new_handle(loop._worker)  # the pool's entry calls it with the slot
        # The fields below belong to the VM's owner (see the module's invariant).
        self.running = False  # between run_forever's start and its teardown
        self.closing = False  # run_forever is ending: workers leave, none polls
        self.home: _LoopThread | None = None
        # The thread whose step the current-task dict may name: the last one
        # to own the VM that has not given it up between callbacks (E2).
        self.holder: _LoopThread | None = None
        self.out = 0  # threads out in a callout mid-callback whose VM another thread took
        self.polling = False  # a thread waits in the selector with the VM released (E1)
        self.poll_until = 0.0  # when it returns at the latest (loop time)
        self.watched = 0.0  # the timer a parked thread has as its park timeout (E6), 0: none
        self.timer = 0.0  # the earliest timer published to the heartbeat (loop time), 0: none
        self.fatal: BaseException | None = None  # escaped a callback on a worker
        self.moved = False  # taken over from a blocked callout since the last iteration (E5)
        # Counters (owner only): takeovers of the loop by another thread.
        self.moves = 0


class EventLoop(_Base):  # type: ignore[misc, valid-type]
    """An asyncio event loop that owns a VM and moves to another thread while a callout blocks.

    Use it as a loop factory: ``asyncio.run(main(), loop_factory=vmown.aio.EventLoop)``
    (3.12+), ``asyncio.Runner(loop_factory=vmown.aio.EventLoop)`` (3.11), or
    :func:`vmown.aio.run`.  While the loop runs, a coroutine may call a
    :func:`vmown.threaded` function (or a generated wrapper) inline: the call
    disowns the VM and owns it again when it returns, at about the cost of a
    plain call.  If the call blocks for longer than a heartbeat tick (1 ms at
    ``hz=1000``), a worker thread takes the loop over and runs the other
    callbacks, timers and I/O meanwhile; the blocked step finishes on its own
    thread once the call returns.  At most ``max_threads`` threads (the
    loop's own included) serve the loop; a worker idle ``idle_timeout``
    seconds exits, one spare stays.  run_forever() returns only once no
    callback is left in flight on another thread.
    """

    def __init__(
        self,
        selector: Any = None,
        *,
        hz: int = 1000,
        max_threads: int = _scheduler.DEFAULT_MAX_THREADS,
        idle_timeout: float = _scheduler.DEFAULT_IDLE_TIMEOUT_S,
    ) -> None:
        _scheduler._check_run_arguments(hz, max_threads, idle_timeout)
        super().__init__(selector)
        # One attribute, not one per field: asyncio's loop already has about
        # two dozen, and past CPython's shared-keys limit (30) every
        # attribute read of the loop -- asyncio's own included -- becomes a
        # dict lookup instead of an inline-cache hit.
        self._vm = _LoopState(self, hz, max_threads, _scheduler._timeout_ns(idle_timeout, "idle_timeout"))

    # ---- running ----

    def run_forever(self) -> None:
        if self._vm.ownership._cb is None:
            raise RuntimeError("Event loop is closed")
        if lib.vmown_broken(self._vm.cb):  # a peer broke the block in an earlier run: no run can own it
            raise error(lib.VMOWN_EBROKEN, "running the loop")
        if _scheduler._here.state is not None:
            raise RuntimeError("vmown.aio.EventLoop cannot run inside vmown.run()")
        if self.is_running() or asyncio.events._get_running_loop() is not None:
            return super().run_forever()  # asyncio raises its own RuntimeError
        own = self._vm.ownership
        home = _LoopThread(own.slot, home=True)
        self._bind(home)
        try:
            own.own()
            self._vm.home = self._vm.holder = home
            self._vm.out = 0
            self._vm.fatal = None
            self._fuse_events()
            try:
                self._start_threads()
                super().run_forever()
            finally:
                self._teardown(home)
                own.disown()
        finally:
            self._unbind()
        fatal, self._vm.fatal = self._vm.fatal, None
        if fatal is not None:
            raise fatal

    def _fuse_events(self) -> None:
        """At the start of a run: take the events in one pass if the loop has the default selector.

        Not if the selector or _process_events is another (a subclass's, or
        one that asyncio's own tests put on the loop).  Looked up here, once:
        reading the loop's ``__dict__`` on every iteration would turn its
        attributes into a dict's (see __init__).
        """
        selector = self._selector
        vm = self._vm
        if type(selector) is selectors.EpollSelector and (
            getattr(self._process_events, "__func__", None) is _Base._process_events
        ):
            if vm.epoll is not selector:
                vm.epoll, vm.epoll_wait = selector, threaded(selector._selector.poll)
        else:
            vm.epoll = vm.epoll_wait = None

    def _bind(self, me: _LoopThread) -> None:
        check(lib.vmown_bind_thread(self._vm.cb, me.slot), "binding a loop thread")
        lib.vmown_bind_resume(lib.vmown_py_resume, self._vm.self_handle)
        _here.thread = me

    def _unbind(self) -> None:
        lib.vmown_bind_thread(ffi.NULL, 0)
        _here.thread = None

    def _start_threads(self) -> None:
        """Home, owning: the heartbeat and the worker pool, and one spare parked."""
        cb = self._vm.cb
        self._vm.running = True
        self._publish(1)
        lib.vmown_heartbeat_set_servers(cb, 0)  # one queue: a long callback gains nothing from moving
        check(lib.vmown_heartbeat_start(cb, self._vm.hz), "starting the heartbeat")
        check(
            lib.vmown_workers_start(
                cb, lib.vmown_py_worker, self._vm.pool_handle, self._vm.max_threads - 1, self._vm.idle_timeout_ns
            ),
            "starting the worker pool",
        )
        lib.vmown_workers_want(cb, 1)

    def _teardown(self, home: _LoopThread) -> None:
        """Home, at run_forever's end: wait for the other threads, stop the heartbeat and the pool."""
        if not self._vm.running:
            return
        cb = self._vm.cb
        self._vm.closing = True
        # On a broken block nothing can be handed over: no quiescing, only
        # the stop of the heartbeat and the pool, whose parked and queued
        # threads the block's marking has woken to leave.
        broken: BrokenError | None = None
        try:
            try:
                if lib.vmown_owner(cb) != home.slot:
                    self._own(home)
                self._quiesce(home)
            except BrokenError as exc:
                broken = exc
            self._publish(0)
            failures = [
                error(rc, what)
                for rc, what in (
                    (lib.vmown_heartbeat_stop(cb), "stopping the heartbeat"),
                    (lib.vmown_workers_stop(cb), "stopping the worker pool"),
                )
                if rc < 0
            ]
            out = ffi.new("vmown_workers_stats *")
            lib.vmown_workers_read(cb, out)
            if out.live:
                self._vm.holder = None
                if broken is None:
                    check(_disown(cb, home.slot, 0), "disown")
                while lib.vmown_workers_join(cb, 100_000_000) > 0:
                    pass
                if broken is None:
                    self._own(home)
                    self._settle(home, False)
            if broken is not None:
                raise broken
            if failures:
                raise failures[0]
        finally:
            self._vm.closing = False
            self._vm.running = False
            self._vm.home = self._vm.holder = None
            self._thread_id = None  # run_forever has ended (asyncio cleared it; _settle may have set it)

    def _worker(self, slot: int) -> None:
        """A pooled worker given the VM: serve the loop until it stops or this worker retires."""
        me = _LoopThread(slot, home=False)
        self._bind(me)
        asyncio.events._set_running_loop(self)
        hooks = sys.get_asyncgen_hooks()
        sys.set_asyncgen_hooks(firstiter=self._asyncgen_firstiter_hook, finalizer=self._asyncgen_finalizer_hook)
        try:
            self._settle(me, False)
            self._want_spares()  # this one is busy now: keep spares parked
            while self._iteration(me):
                pass
        except BaseException as exc:  # noqa: BLE001 - a callback's SystemExit, KeyboardInterrupt...: the home thread raises it
            self._worker_failed(me, exc)
        finally:
            sys.set_asyncgen_hooks(*hooks)
            asyncio.events._set_running_loop(None)
            self._unbind()
            _scheduler._forget_dummy_thread()


    def _worker_failed(self, me: _LoopThread, exc: BaseException) -> None:
        """An exception escaped a callback on a worker: the loop stops and run_forever raises it.

        On a broken block nothing can be owned or handed over: the worker
        only records the error and leaves (the home thread's teardown, woken
        by the block's marking, stops the rest).
        """
        if lib.vmown_owner(self._vm.cb) != me.slot:
            try:
                self._own(me)
                self._settle(me, False)
            except BrokenError:
                pass
        if self._vm.fatal is None:
            self._vm.fatal = exc
        self._stopping = True
        if self._vm.holder is me:
            self._vm.holder = None
        if self._vm.home is not None:
            lib.vmown_unpark(self._vm.cb, self._vm.home.slot)
        _disown(self._vm.cb, me.slot, 0)  # on a broken block it fails, and nothing is left to hand over

    # ---- one iteration ----

    def _run_once(self) -> None:
        vm = self._vm
        home = vm.home
        if home is None:  # not between run_forever's set-up and teardown
            return super()._run_once()  # type: ignore[misc, no-any-return]
        self._iteration(home)
        if self._stopping or vm.closing or vm.fatal is not None:
            if vm.fatal is not None:
                self._stopping = True
            self._quiesce(home)

    def _iteration(self, me: _LoopThread) -> bool:
        """One iteration of the loop on the owner: asyncio's _run_once, giving the VM up between callbacks.

        Returns False for a worker that leaves (not owning the VM), True
        otherwise (owning it).  This is the hot path: per callback it adds
        one load of the waiter count to asyncio's own loop.
        """
        vm = self._vm
        if not me.home and (self._stopping or vm.closing):  # E3
            if vm.polling:
                self._write_to_self()  # the home thread may be the poller
            lib.vmown_unpark(vm.cb, vm.home.slot if vm.home else 0)
            return self._park(me)

        scheduled = self._scheduled
        sched_count = len(scheduled)
        if (
            sched_count > base_events._MIN_SCHEDULED_TIMER_HANDLES
            and self._timer_cancelled_count / sched_count > base_events._MIN_CANCELLED_TIMER_HANDLES_FRACTION
        ):
            kept = []
            for timer in scheduled:
                if timer._cancelled:
                    timer._scheduled = False
                else:
                    kept.append(timer)
            heapq.heapify(kept)
            self._scheduled = scheduled = kept
            self._timer_cancelled_count = 0
        else:
            while scheduled and scheduled[0]._cancelled:
                self._timer_cancelled_count -= 1
                timer = heapq.heappop(scheduled)
                timer._scheduled = False

        ready = self._ready
        if ready or self._stopping:
            timeout: float | None = 0
        elif scheduled:
            timeout = min(max(0, scheduled[0]._when - self.time()), base_events.MAXIMUM_SELECT_TIMEOUT)
        else:
            timeout = None
        selector = self._selector
        fused = selector is vm.epoll
        if timeout == 0:
            # E7: never beside the poller (poll(2) objects refuse a second
            # caller; epoll would report the same events to both).
            if vm.polling:
                event_list: Any = ()
            elif fused:
                event_list = _epoll_events(selector._selector.poll, 0, selector)
            else:
                event_list = selector.select(0)
        elif vm.polling:
            return self._park(me)  # another thread waits in the selector (E1)
        else:
            event_list = self._poll(me, timeout, fused)
            if not me.home and (self._stopping or vm.closing):
                # E3: the loop stopped while this worker polled.  The loop
                # ends with the iteration that stopped it, as asyncio's does;
                # the selector is level-triggered, so these events are
                # reported again to the next run.
                return True
        if fused:
            self._ready_events(event_list, selector._fd_to_key)
        else:
            self._process_events(event_list)
        event_list = None

        end_time = self.time() + self._clock_resolution
        scheduled = self._scheduled
        moved = vm.moved
        if moved:
            vm.moved = False
        if scheduled and scheduled[0]._when < end_time:
            due = []
            while scheduled:
                timer = scheduled[0]
                if timer._when >= end_time:
                    break
                timer = heapq.heappop(scheduled)
                timer._scheduled = False
                due.append(timer)
            if moved:
                self._timers_first(due)  # E5
            else:
                ready.extend(due)

        waiters = vm.waiters
        for _ in range(len(ready)):
            if waiters[0]:  # a thread waits for the VM: let it in between callbacks
                return self._park(me)
            try:
                handle = ready.popleft()
            except IndexError:  # another thread ran some meanwhile (this one was out in a callout)
                break
            if handle._cancelled:
                continue
            if self._debug:
                try:
                    self._current_handle = handle
                    t0 = self.time()
                    handle._run()
                    dt = self.time() - t0
                    if dt >= self.slow_callback_duration:
                        base_events.logger.warning(
                            "Executing %s took %.3f seconds", base_events._format_handle(handle), dt
                        )
                finally:
                    self._current_handle = None
            else:
                handle._run()
        handle = None  # break cycles when an exception occurs
        return True

    def _timers_first(self, due: list[Any]) -> None:
        """Run the due timers now and put what each made ready at the front of the ready queue (E5).

        A timer's callback mostly makes a waiting task ready (sleep's future
        resolved: the task's wake-up, call_soon'd): that wake-up goes first
        too, or it would wait behind the burst.  A timer during which the
        loop was taken over (it blocked) leaves the queue as it is.
        """
        ready = self._ready
        for timer in due:
            if timer._cancelled:
                continue
            before, moves = len(ready), self._vm.moves
            timer._run()
            made = len(ready) - before
            if made > 0 and moves == self._vm.moves:
                ready.rotate(made)

    def _quiesce(self, home: _LoopThread) -> None:
        """Home, owning: wait until no callback is in flight on another thread and nobody polls (E3)."""
        while self._vm.out or self._vm.polling:
            if self._vm.polling:
                self._write_to_self()
            self._park(home)

    # ---- giving the VM up and taking it ----

    def _ready_events(self, events: list[tuple[int, int]], fd_to_key: dict[int, Any]) -> None:
        """Owner: the default selector's select and asyncio's _process_events in one pass.

        ``events`` are the epoll object's (fd, events) pairs.  Per pair, what
        select keeps (the registration's key, the events it asked for) and
        what _process_events does with it: a reader or writer handle goes
        to the ready queue, a cancelled one is unregistered.
        """
        ready = self._ready
        for fd, event in events:
            key = fd_to_key.get(fd)
            if key is None:  # unregistered since the wait
                continue
            wanted = key.events
            reader, writer = key.data
            if event & _NOT_EPOLLOUT and wanted & _EVENT_READ and reader is not None:
                if reader._cancelled:
                    self._remove_reader(key.fileobj)
                else:
                    ready.append(reader)
            if event & _NOT_EPOLLIN and wanted & _EVENT_WRITE and writer is not None:
                if writer._cancelled:
                    self._remove_writer(key.fileobj)
                else:
                    ready.append(writer)

    def _poll(self, me: _LoopThread, timeout: float | None, fused: bool) -> Any:
        """Wait in the selector with the VM released (E1); return its events, owning the VM again.

        ``fused``: wait in the default selector's epoll object and return
        its (fd, events) pairs for _ready_events; else the selector's
        select() and its (key, mask) pairs.
        """
        self._vm.polling = True
        self._vm.poll_until = float("inf") if timeout is None else self.time() + timeout
        self._vm.holder = None
        self._publish(0)
        try:
            # A callout: disowned around the wait and owned again with one
            # CAS, both with the GIL held; only a VM taken meanwhile makes
            # it wait, with the GIL released.  (Dropping the GIL around the
            # disown and the own, as two cffi calls would, lets other Python
            # threads run at points where asyncio's loop keeps running.)
            selector = self._selector
            if fused:
                return _epoll_events(self._vm.epoll_wait, timeout, selector)
            if self._vm.select_of is not selector:  # a selector put on the loop after it was made
                self._vm.select = threaded(selector.select)
                self._vm.select_of = selector
            events = self._vm.select(timeout)
        finally:
            self._vm.polling = False
            self._settle(me, False)
        selector = self._selector
        if events and isinstance(selector, selectors.BaseSelector):  # E8
            keys = selector.get_map()
            events = [(key, mask) for key, mask in events if keys.get(key.fd) is key]
        return events

    def _park(self, me: _LoopThread) -> bool:
        """Owner, between callbacks: give the VM up (to the head waiter) and park.

        True once owning it again; False for a worker that leaves (not owning).
        """
        if self._vm.holder is me:
            self._vm.holder = None
        stopping = self._stopping or self._vm.closing  # the home thread takes the VM next, or nobody
        self._publish(1 if (self._ready or not self._vm.polling) and not stopping else 0)
        # E6: the earliest timer that nobody waits for (the poller covers
        # the ones up to its own timeout) is watched by one parked thread,
        # with it as its park timeout; the heartbeat sleeps when quiet.
        watched = self._vm.timer if self._vm.timer and not stopping else 0.0
        if watched and (not self._vm.watched or watched < self._vm.watched):
            self._vm.watched = watched
            timeout_ns = max(0, int((watched - self.time()) * 1e9))
        else:
            watched = 0.0
            timeout_ns = -1 if me.home else self._vm.idle_timeout_ns
        rc = _park_c(self._vm.cb, me.slot, timeout_ns)
        if rc != 1:  # not given the VM: unparked, timed out or interrupted
            if rc not in (0, _ETIMEDOUT, _EINTR):
                raise vm_error(self._vm.cb, rc, "park")
            retire = rc == _ETIMEDOUT and not watched and self._surplus()
            if not me.home and (self._vm.closing or retire):
                return False
            self._own(me)
        elif not me.home:
            self._want_spares()  # activated: keep spares parked
        if watched and self._vm.watched == watched:
            self._vm.watched = 0.0
        self._settle(me, False)
        return True

    def _want_spares(self) -> None:
        """Owner, having taken the loop over: ask the pool for parked workers (as vmown.run's _ensure_spare).

        One per ready callback up to _SPARES: in a burst of callbacks that
        each block, each blocked one uses up a parked worker.
        """
        lib.vmown_workers_want(self._vm.cb, min(len(self._ready), _scheduler._SPARES) or 1)

    def _surplus(self) -> bool:
        out = ffi.new("vmown_heartbeat_stats *")
        lib.vmown_heartbeat_read(self._vm.cb, out)
        return int(out.idle_workers) > 0

    def _own(self, me: _LoopThread) -> None:
        rc = _own_wait(self._vm.cb, me.slot, -1, _INTERRUPTIBLE)
        while rc:
            if rc != _EINTR:
                raise vm_error(self._vm.cb, rc, "own")
            rc = _own_wait(self._vm.cb, me.slot, -1, _INTERRUPTIBLE)

    def _settle(self, me: _LoopThread, mid_callback: bool) -> None:
        """Owner, having just come to own the VM: make the loop's per-thread state this thread's (E2).

        ``mid_callback``: the thread is back from a callout in the middle of
        a callback (the resume hook), not between callbacks.
        """
        holder = self._vm.holder
        if holder is not me:
            if holder is not None:  # it gave the VM up in a callout, mid-callback
                holder.out = True
                self._vm.out += 1
                self._vm.moves += 1
                self._vm.moved = True
                if _SWAP_TASKS:
                    task = _current_tasks.get(self)
                    holder.task = task
                    if task is not None:
                        _leave_task(self, task)
            if mid_callback and me.out:
                me.out = False
                self._vm.out -= 1
                task, me.task = me.task, None
                if task is not None:
                    _enter_task(self, task)
            self._vm.holder = me
            self._thread_id = me.ident
        self._publish(1)

    def _publish(self, runnable: int) -> None:
        """Tell the heartbeat whether the loop needs a thread if the VM is left unowned, and its earliest timer.

        The loop needs one whenever nobody polls its selector or callbacks
        are ready: its descriptors are work too.
        """
        scheduled = self._scheduled
        running = self._vm.running
        when = scheduled[0]._when if scheduled and running else 0.0
        if self._vm.polling and when >= self._vm.poll_until - _POLL_SLACK:
            when = 0.0  # the poller wakes for it itself: an activation would only race it
        if when != self._vm.timer or not running:
            self._vm.timer = when
            _set_work(self._vm.cb, runnable if running else 0, int(when * 1e9))
        else:  # a plain store, as vmown_set_work's: no C call, so the GIL is not dropped here
            self._vm.work[_WORK_RUNNABLE] = runnable

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any, context: Any = None) -> Any:
        timer = super().call_at(when, callback, *args, context=context)
        if timer._source_traceback:  # debug mode: the caller's frame last, as asyncio's own call_at leaves it
            del timer._source_traceback[-1]
        if self._vm.running and (not self._vm.timer or when < self._vm.timer) and not (
            self._vm.polling and when >= self._vm.poll_until - _POLL_SLACK
        ):  # E4
            self._publish(0 if self._vm.polling and not self._ready else 1)
        return timer

    # ---- the rest ----

    def close(self) -> None:
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        super().close()
        vm = getattr(self, "_vm", None)  # None: __init__ failed before making it
        if vm is None:
            return
        vm.self_handle = vm.pool_handle = None  # they refer to the loop: a cycle
        if vm.ownership._cb is not None:
            try:
                vm.ownership.close()
            except VmownError:
                pass  # the thread that ran the loop is still registered: its slot goes with it

    @property
    def ownership(self) -> Ownership:
        """The loop's control block (for stats and observers)."""
        return self._vm.ownership

    @property
    def moves(self) -> int:
        """How many times another thread took the loop over from a callout that blocked."""
        return self._vm.moves


def _epoll_events(wait: Callable[..., Any], timeout: float | None, selector: Any) -> Any:
    """An epoll object's (fd, events) pairs after a wait of timeout seconds, as EpollSelector.select waits.

    ``wait`` is the object's poll method, or a callout of it.  The timeout
    rounds up to whole milliseconds (epoll's resolution: at least the time
    asked for); None waits for ever.
    """
    if timeout is None:
        timeout = -1
    elif timeout <= 0:
        timeout = 0
    else:
        timeout = math.ceil(timeout * 1e3) * 1e-3
    try:
        return wait(timeout, max(len(selector._fd_to_key), 1))
    except InterruptedError:
        return ()


@ffi.def_extern()  # type: ignore[misc]
def vmown_py_resume(handle: Any, slot: int) -> None:
    """The callout path's hook (vmown_bind_resume): a loop thread is back mid-callback, the VM taken meanwhile."""
    me = _here.thread
    if me is not None:
        ffi.from_handle(handle)._settle(me, True)


def run(main: Coroutine[Any, Any, T], *, debug: bool | None = None) -> T:
    """``asyncio.run(main)`` on a :class:`EventLoop`; returns main's result."""
    with asyncio.Runner(debug=debug, loop_factory=EventLoop) as runner:
        return runner.run(main)


if sys.version_info < (3, 11):  # pragma: no cover - the package requires 3.11
    raise ImportError("vmown.aio needs Python 3.11 or later (asyncio.Runner)")
