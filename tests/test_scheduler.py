"""scheduler.py: the pure bookkeeping of which kernel serves which request."""

from __future__ import annotations

import random

import pytest

from cellserve.scheduler import QueueFull, Scheduler


def pool(*kernels: str, max_queue: int | None = None) -> Scheduler[str, str]:
    scheduler: Scheduler[str, str] = Scheduler(max_queue)
    for kernel in kernels:
        assert scheduler.release(kernel) is None
    return scheduler


def test_new_scheduler_is_quiet_and_empty() -> None:
    scheduler = pool()
    assert (scheduler.free, scheduler.busy, scheduler.waiting) == (0, 0, 0)
    assert scheduler.is_quiet


def test_sequential_requests_rotate_least_recently_used_first() -> None:
    scheduler = pool("a", "b", "c")
    served = []
    for n in range(7):
        kernel = scheduler.submit(f"r{n}")
        assert kernel is not None
        served.append(kernel)
        assert scheduler.release(kernel) is None
    assert served == ["a", "b", "c", "a", "b", "c", "a"]
    assert scheduler.is_quiet


def test_busy_kernels_are_not_handed_out_twice() -> None:
    scheduler = pool("a", "b")
    assert [scheduler.submit("r1"), scheduler.submit("r2")] == ["a", "b"]
    assert (scheduler.free, scheduler.busy) == (0, 2)
    assert scheduler.submit("r3") is None
    assert scheduler.waiting == 1
    assert not scheduler.is_quiet


def test_waiters_are_served_fifo_by_whichever_kernel_frees_first() -> None:
    scheduler = pool("a", "b")
    scheduler.submit("r1")
    scheduler.submit("r2")
    for waiter in ("w1", "w2", "w3"):
        assert scheduler.submit(waiter) is None
    assert scheduler.release("b") == "w1"  # the kernel goes straight to the head waiter
    assert scheduler.release("a") == "w2"
    assert (scheduler.busy, scheduler.free, scheduler.waiting) == (2, 0, 1)
    assert scheduler.release("a") == "w3"
    assert scheduler.release("b") is None
    assert scheduler.release("a") is None
    assert (scheduler.busy, scheduler.free, scheduler.waiting) == (0, 2, 0)
    assert scheduler.is_quiet


def test_queue_full_at_max_queue() -> None:
    scheduler = pool("a", max_queue=2)
    assert scheduler.submit("r1") == "a"
    assert scheduler.submit("w1") is None
    assert scheduler.submit("w2") is None
    with pytest.raises(QueueFull):
        scheduler.submit("w3")
    assert scheduler.waiting == 2
    assert scheduler.release("a") == "w1"
    assert scheduler.submit("w3") is None  # room again


def test_max_queue_zero_rejects_as_soon_as_every_kernel_is_busy() -> None:
    scheduler = pool("a", max_queue=0)
    assert scheduler.submit("r1") == "a"
    with pytest.raises(QueueFull):
        scheduler.submit("r2")


def test_unbounded_queue() -> None:
    scheduler = pool()
    for n in range(1000):
        assert scheduler.submit(f"w{n}") is None
    assert scheduler.waiting == 1000


def test_withdraw() -> None:
    scheduler = pool("a")
    scheduler.submit("r1")
    scheduler.submit("w1")
    scheduler.submit("w2")
    assert scheduler.withdraw("w1") is True
    assert scheduler.withdraw("w1") is False
    assert scheduler.release("a") == "w2"  # w1 is skipped
    assert scheduler.withdraw("w2") is False  # already given a kernel
    assert scheduler.withdraw("never-seen") is False


def test_release_of_a_new_kernel_serves_the_queue() -> None:
    scheduler = pool()
    assert scheduler.submit("w1") is None
    assert scheduler.release("fresh") == "w1"
    assert (scheduler.busy, scheduler.free, scheduler.waiting) == (1, 0, 0)


def test_double_release_does_not_duplicate_a_free_kernel() -> None:
    scheduler = pool("a")
    scheduler.release("a")
    assert scheduler.free == 1
    assert scheduler.submit("r1") == "a"
    assert scheduler.submit("r2") is None


def test_remove_idle_kernel() -> None:
    scheduler = pool("a", "b")
    scheduler.remove("a")
    assert scheduler.free == 1
    assert scheduler.submit("r1") == "b"
    assert scheduler.submit("r2") is None


def test_remove_busy_kernel_leaves_waiters_queued() -> None:
    scheduler = pool("a")
    scheduler.submit("r1")
    scheduler.submit("w1")
    scheduler.remove("a")
    assert (scheduler.busy, scheduler.free, scheduler.waiting) == (0, 0, 1)
    assert not scheduler.is_quiet
    assert scheduler.release("replacement") == "w1"


def test_remove_unknown_kernel_is_harmless() -> None:
    scheduler = pool("a")
    scheduler.remove("zzz")
    assert scheduler.free == 1


def test_is_quiet_ignores_free_kernels_but_not_waiters() -> None:
    scheduler = pool("a")
    assert scheduler.is_quiet
    scheduler.submit("r1")
    assert not scheduler.is_quiet
    scheduler.remove("a")
    assert scheduler.is_quiet
    scheduler.submit("w1")
    assert not scheduler.is_quiet
    scheduler.withdraw("w1")
    assert scheduler.is_quiet


@pytest.mark.parametrize("seed", range(20))
def test_random_operations_keep_the_books_consistent(seed: int) -> None:
    """A model check: the scheduler's counts agree with an independent record of every step."""
    rng = random.Random(seed)
    max_queue = rng.choice([None, 0, 1, 3, 10])
    scheduler: Scheduler[str, int] = Scheduler(max_queue)
    known = [f"k{n}" for n in range(rng.randint(1, 4))]
    running: dict[str, int | None] = {}  # busy kernel → waiter it serves (None: direct submit)
    free: list[str] = []
    queued: list[int] = []
    assigned: set[int] = set()
    for kernel in known:
        scheduler.release(kernel)
        free.append(kernel)
    next_waiter = 0
    for _ in range(300):
        action = rng.choice(["submit", "submit", "release", "withdraw", "remove", "add"])
        if action == "submit":
            waiter, next_waiter = next_waiter, next_waiter + 1
            try:
                given = scheduler.submit(waiter)
            except QueueFull:
                assert not free
                assert max_queue is not None
                assert len(queued) == max_queue
                continue
            if given is None:
                assert not free
                queued.append(waiter)
            else:
                assert given == free.pop(0)  # least recently used first
                running[given] = waiter
                assigned.add(waiter)
        elif action == "release" and running:
            kernel = rng.choice(sorted(running))
            del running[kernel]
            handed = scheduler.release(kernel)
            if queued:
                assert handed == queued.pop(0)  # FIFO
                running[kernel] = handed
                assigned.add(handed)
            else:
                assert handed is None
                free.append(kernel)
        elif action == "withdraw" and (queued or assigned):
            waiter = rng.choice(sorted(set(queued) | assigned))
            assert scheduler.withdraw(waiter) is (waiter in queued)
            if waiter in queued:
                queued.remove(waiter)
        elif action == "remove":
            kernel = rng.choice(known)
            scheduler.remove(kernel)
            running.pop(kernel, None)
            if kernel in free:
                free.remove(kernel)
        elif action == "add":
            kernel = f"k{len(known)}"
            known.append(kernel)
            handed = scheduler.release(kernel)
            if queued:
                assert handed == queued.pop(0)
                running[kernel] = handed
                assigned.add(handed)
            else:
                assert handed is None
                free.append(kernel)

        assert set(running).isdisjoint(free)
        assert set(queued).isdisjoint(assigned)
        assert not (free and queued), "a kernel is idle while requests wait"
        assert (scheduler.busy, scheduler.free, scheduler.waiting) == (
            len(running),
            len(free),
            len(queued),
        )
        assert scheduler.is_quiet is (not running and not queued)
