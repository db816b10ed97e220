"""Worker processes that check CSRs and sign workload certificates off the event loop.

`cryptography` holds the GIL while it verifies and signs, so a thread pool does not add capacity;
worker processes do. The pool speaks to each worker over its stdin/stdout pipes from the event loop
itself (no helper threads, unlike `concurrent.futures.ProcessPoolExecutor`, whose per-task thread
hand-offs cost the loop about as much as the signing they move away).

Contract:
- every worker holds the current `Authority`: it is sent once when the worker starts and again,
  on the same pipe, whenever the CA's authority changes (root rotation, new plug-in material), so a
  request sent after `set_authority` is always signed by the new signer, and the chain a worker
  returns is always the chain of the key that signed the leaf; the `SigningPolicy` travels the
  same way, sent before the first request that uses it and again only when a request brings another;
- `sign(...)` returns the PEM chain (leaf first, root last) or raises the same `SigningRefused` the
  in-process path raises; a worker that dies fails its in-flight requests with `WorkerUnavailable`
  and is restarted (with backoff if it keeps dying), so the next request succeeds; a worker that
  leaves a request unanswered for `answer_timeout` (signing takes about a millisecond) once it has
  said it is ready (a worker still starting up gets READY_TIMEOUT) is taken for hung: it is
  killed, which fails its requests the same way and replaces it (one watchdog task checks every
  worker's oldest request a few times per `answer_timeout`, so a request costs no timer);
- `close()` stops every worker; requests after it raise `WorkerUnavailable`.

Requests are batched: frames queued for a worker during one event-loop iteration go out in one
write at the end of it, and a worker answers everything it read in one go with one write, so a busy
pool costs a few system calls per batch, not per request.

The frame format on the pipes is a 4-byte big-endian length and a pickle. Both ends are this
module, started by this process, so nothing untrusted is ever unpickled.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import pathlib
import pickle
import signal
import struct
import sys
import time
from collections.abc import Iterator
from typing import Any

from cryptography import x509

from certs.authority import Authority
from certs.pem import cert_pem, key_pem, load_key
from certs.signing import Refusal, SigningPolicy, SigningRefused, check_csr, choose_identities, resolve_ttl, sign

log = logging.getLogger(__name__)

_LEN = struct.Struct(">I")
MAX_WORKERS = 4
RESTART_BACKOFF_MAX = 5.0
READY_TIMEOUT = 30.0
ANSWER_TIMEOUT = 10.0  # a worker that has not answered a request by then is hung: killed and replaced
_QUICK_DEATH = 2.0  # a worker that dies sooner than this after starting makes the next restart back off
_PACKAGE_ROOT = str(pathlib.Path(__file__).resolve().parents[1])  # where `certs` is importable from


class WorkerUnavailable(RuntimeError):
    """No signing worker could take or finish the request (it crashed, or the pool is closed); retrying may work."""


def default_workers(*, usable_cores: int | None = None) -> int:
    """Workers to start when not configured: none on one core (the loop signs), else one per spare core, at most 4.

    Measured with bench/ca on 2 shared cores (load generator included, 4 rounds interleaved; server
    CPU ms per signature = loop + Envoy + workers, medians; load average ~20, so all run high): 0 workers 1.71
    (event loop 1.30), 1 worker 1.28 (loop 0.56 + worker 0.49), 2 workers 1.48; the bare signer 0.76.
    With no worker the loop's signing competes with gRPC for the GIL and the one core it can use; a
    second worker on 2 cores adds a process competing for the same cores, and smaller batches per pipe.
    """
    cores = len(os.sched_getaffinity(0)) if usable_cores is None else usable_cores
    return 0 if cores <= 1 else min(cores - 1, MAX_WORKERS)


def sign_request(
    authority: Authority,
    *,
    csr: str,
    validity_seconds: int,
    caller_identities: tuple[str, ...],
    policy: SigningPolicy,
    now: dt.datetime,
) -> list[str]:
    """Check the CSR, TTL and identity and sign: the PEM chain, leaf first. Raises SigningRefused.

    The CPU-bound part of a CA request, shared by the in-process path and the workers.
    """
    checked = check_csr(csr, policy=policy)
    ttl = resolve_ttl(validity_seconds, policy=policy)
    identities = choose_identities(checked.requested_identity, caller_identities=caller_identities)
    leaf = sign(authority, checked, identities=identities, ttl=ttl, now=now)[0]
    return [cert_pem(leaf).decode("ascii"), *authority.chain_tail_pem]


def _pickle_friendly(now: dt.datetime) -> tuple[dt.datetime, bool]:
    """`now` as a naive UTC datetime and whether it was aware: pickling a `timezone` goes through
    copyreg and costs several times the rest of a request's frame."""
    if now.tzinfo is None:
        return now, False
    return now.astimezone(dt.UTC).replace(tzinfo=None), True


def _frame(message: object) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(data)) + data


def _frames(buffer: bytearray) -> Iterator[Any]:
    """Pop every complete frame off the front of `buffer`."""
    offset = 0
    while len(buffer) - offset >= _LEN.size:
        (size,) = _LEN.unpack_from(buffer, offset)
        end = offset + _LEN.size + size
        if len(buffer) < end:
            break
        yield pickle.loads(buffer[offset + _LEN.size : end])
        offset = end
    del buffer[:offset]


def _authority_message(authority: Authority) -> tuple[Any, ...]:
    return (
        "init",
        key_pem(authority.key),
        cert_pem(authority.cert),
        tuple(cert_pem(c) for c in authority.chain),
        tuple(cert_pem(c) for c in authority.roots),
        authority.plugin,
    )


class _Worker(asyncio.SubprocessProtocol):
    """One worker process: its pipe transport, the requests it has not answered yet, and how it ended."""

    def __init__(self, pool: SigningPool) -> None:
        self.pool = pool
        self.transport: asyncio.SubprocessTransport | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stdin: asyncio.WriteTransport | None = None
        self.pending: dict[int, asyncio.Future[list[str]]] = {}  # in the order sent
        self.sent_at: dict[int, float] = {}  # request id -> when it was queued (monotonic)
        self.outbox: list[bytes] = []  # frames queued during this loop iteration
        self.policy: SigningPolicy | None = None  # the policy last sent (sent again only when it changes)
        self.buffer = bytearray()
        self.started = time.monotonic()
        self.ready_at: float | None = None  # when the worker said it is ready to sign
        self.dead = False
        self.gone = asyncio.Event()  # stopped answering (output closed or process exited)
        self.exited = asyncio.Event()  # the process has exited and been reaped

    # -- asyncio.SubprocessProtocol --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.SubprocessTransport)
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        stdin = transport.get_pipe_transport(0)
        assert isinstance(stdin, asyncio.WriteTransport)
        self.stdin = stdin

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self.buffer += data
        for request_id, status, payload in _frames(self.buffer):
            if status == "ready":
                self.ready_at = time.monotonic()
                continue
            future = self.pending.pop(request_id, None)
            self.sent_at.pop(request_id, None)
            if future is None or future.done():
                continue
            if status == "ok":
                future.set_result(payload)
            elif status == "refused":
                refusal, reason, message = payload
                future.set_exception(SigningRefused(Refusal(refusal), reason, message))
            else:
                future.set_exception(RuntimeError(payload))

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1:
            self._died("closed its output")

    def process_exited(self) -> None:
        self.exited.set()
        code = self.transport.get_returncode() if self.transport is not None else None
        self._died(f"exited with code {code}")

    # -- used by the pool ------------------------------------------------------------------------
    def send(self, message: object) -> None:
        """Queue `message`; every frame queued in this loop iteration is written at its end, in order."""
        if not self.outbox:
            assert self.loop is not None
            self.loop.call_soon(self.flush)
        self.outbox.append(_frame(message))

    def flush(self) -> None:
        """Write the queued frames in one system call (dropped if the worker is gone)."""
        frames, self.outbox = self.outbox, []
        if frames and self.stdin is not None and not self.stdin.is_closing():
            self.stdin.write(b"".join(frames))

    def overdue(self, now: float, answer_timeout: float) -> bool:
        """The oldest unanswered request has waited over `answer_timeout` since the worker was ready
        (a worker still starting, e.g. importing on a busy machine, gets READY_TIMEOUT instead)."""
        for sent in self.sent_at.values():
            if self.ready_at is None:
                return now - self.started > READY_TIMEOUT
            return now - max(sent, self.ready_at) > answer_timeout
        return False

    def _died(self, how: str) -> None:
        if self.dead:
            return
        self.dead = True
        self.gone.set()
        pending, self.pending = self.pending, {}
        self.sent_at.clear()
        for future in pending.values():
            if not future.done():
                future.set_exception(WorkerUnavailable(f"the signing worker {how} before answering; retry"))
        self.pool._worker_died(self, how)

    def kill(self) -> None:
        if self.transport is not None and self.transport.get_returncode() is None:
            with contextlib.suppress(ProcessLookupError):
                self.transport.kill()


class SigningPool:
    """`workers` signing processes fed from the event loop; see the module docstring for the contract."""

    def __init__(self, *, workers: int, authority: Authority, answer_timeout: float = ANSWER_TIMEOUT) -> None:
        """Raises ValueError unless `workers` >= 1. Call `await start()` before `sign`."""
        if workers < 1:
            raise ValueError(f"workers: {workers} must be at least 1")
        self.size = workers
        self.answer_timeout = answer_timeout
        self._authority = authority
        self._init = _authority_message(authority)
        self._workers: list[_Worker] = []
        self._next_id = 0
        self._closed = False
        self._changed = asyncio.Event()
        self._restarts: set[asyncio.Task[None]] = set()
        self._backoff = 0.0
        self._watchdog: asyncio.Task[None] | None = None
        self.restart_count = 0

    @property
    def workers(self) -> tuple[_Worker, ...]:
        return tuple(self._workers)

    async def start(self) -> None:
        """Start every worker. Raises OSError if a process cannot be started."""
        for _ in range(self.size):
            await self._spawn()
        self._watchdog = asyncio.get_running_loop().create_task(self._watch_hung(), name="signing-pool-watchdog")

    async def _watch_hung(self) -> None:
        """Kill every worker whose oldest request has waited over `answer_timeout` (its exit replaces it)."""
        while not self._closed:
            await asyncio.sleep(min(1.0, self.answer_timeout / 4))
            now = time.monotonic()
            for worker in self._workers:
                if worker.overdue(now, self.answer_timeout):
                    log.error("a CA signing worker left a request unanswered for %g s; killing it", self.answer_timeout)
                    worker.kill()  # its exit fails every request it holds and starts a replacement

    async def _spawn(self) -> None:
        loop = asyncio.get_running_loop()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
        _, worker = await loop.subprocess_exec(
            lambda: _Worker(self),
            sys.executable,
            "-m",
            __name__,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=None,
            env=env,
        )
        if self._closed:
            worker.kill()
            return
        worker.send(self._init)
        self._workers.append(worker)
        self._changed.set()

    def set_authority(self, authority: Authority) -> None:
        """Make every worker sign with `authority` from the next request on (a `CertificateAuthority` listener)."""
        self._authority = authority
        self._init = _authority_message(authority)
        for worker in self._workers:
            worker.send(self._init)

    async def sign(
        self,
        *,
        csr: str,
        validity_seconds: int,
        caller_identities: tuple[str, ...],
        policy: SigningPolicy,
        now: dt.datetime,
    ) -> list[str]:
        """`sign_request` in a worker: the PEM chain, leaf first. Raises SigningRefused, or WorkerUnavailable
        when the worker died before answering or none became ready within READY_TIMEOUT."""
        workers = self._workers
        worker = workers[0] if len(workers) == 1 and not self._closed else await self._pick()
        self._next_id += 1
        request_id = self._next_id
        assert worker.loop is not None
        future: asyncio.Future[list[str]] = worker.loop.create_future()
        worker.pending[request_id] = future
        worker.sent_at[request_id] = time.monotonic()
        if worker.policy is not policy:
            # The policy rarely changes: it goes down the pipe once, not with every request.
            worker.policy = policy
            worker.send(("policy", policy))
        worker.send(("sign", request_id, csr, validity_seconds, caller_identities, *_pickle_friendly(now)))
        return await future

    async def _pick(self) -> _Worker:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if self._closed:
                raise WorkerUnavailable("the signing pool is closed")
            if self._workers:
                return min(self._workers, key=lambda w: len(w.pending))
            self._changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerUnavailable(f"no signing worker became ready within {READY_TIMEOUT:.0f} s")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._changed.wait()

    def _worker_died(self, worker: _Worker, how: str) -> None:
        if worker in self._workers:
            self._workers.remove(worker)
        if self._closed:
            return
        quick = time.monotonic() - worker.started < _QUICK_DEATH
        self._backoff = min(RESTART_BACKOFF_MAX, max(0.1, self._backoff * 2)) if quick else 0.0
        log.error("a CA signing worker %s; starting another (in %.1f s)", how, self._backoff)
        task = asyncio.get_running_loop().create_task(self._restart(self._backoff))
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    async def _restart(self, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        if self._closed:
            return
        try:
            await self._spawn()
        except OSError:
            log.exception("cannot start a CA signing worker")
            self._worker_died(_Worker(self), "could not be started")
            return
        self.restart_count += 1

    async def close(self) -> None:
        """Stop the workers; their in-flight requests fail with WorkerUnavailable."""
        self._closed = True
        self._changed.set()
        for task in [*self._restarts, *([self._watchdog] if self._watchdog is not None else [])]:
            task.cancel()
        if self._watchdog is not None:
            await asyncio.gather(self._watchdog, return_exceptions=True)
        workers, self._workers = self._workers, []
        for worker in workers:
            worker.flush()
            if worker.stdin is not None:
                worker.stdin.close()  # EOF: the worker exits after answering what it has read
        deadline = time.monotonic() + 5.0
        for worker in workers:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await worker.exited.wait()
            if not worker.exited.is_set():
                worker.kill()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await worker.exited.wait()
            worker._died("was stopped")
            if worker.transport is not None:
                # Only once asyncio has reaped the process: closing the transport earlier lets the
                # process object reap it behind the child watcher's back.
                worker.transport.close()


# -- the worker process ---------------------------------------------------------------------------
def _load_authority(message: tuple[Any, ...]) -> Authority:
    _, key, cert, chain, roots, plugin = message
    return Authority(
        key=load_key(key),
        cert=x509.load_pem_x509_certificate(cert),
        chain=tuple(x509.load_pem_x509_certificate(c) for c in chain),
        roots=tuple(x509.load_pem_x509_certificate(c) for c in roots),
        plugin=plugin,
    )


def _handle(
    authority: Authority | None, policy: SigningPolicy | None, message: tuple[Any, ...]
) -> tuple[int, str, object]:
    _, request_id, csr, validity_seconds, identities, naive_now, aware = message
    now = naive_now.replace(tzinfo=dt.UTC) if aware else naive_now
    if authority is None:
        return request_id, "error", "the signing worker has no key material"
    if policy is None:
        return request_id, "error", "the signing worker has no signing policy"
    try:
        chain = sign_request(
            authority, csr=csr, validity_seconds=validity_seconds, caller_identities=identities, policy=policy, now=now
        )
    except SigningRefused as exc:
        return request_id, "refused", (exc.refusal.value, exc.reason, str(exc))
    except Exception as exc:
        return request_id, "error", f"{type(exc).__name__}: {exc}"
    return request_id, "ok", chain


def worker_main() -> None:
    """Serve frames from stdin until EOF: `init` replaces the authority, `policy` the signing policy
    of the requests after it, `sign` answers on stdout.

    Answers to everything read in one go are written in one go, so a busy pool costs few system calls.
    The parent alone decides when a worker ends (by closing its stdin, or by dying): SIGINT and SIGTERM
    sent to the whole process group (Ctrl-C in a terminal, `timeout`, `kill -- -PGID`) are ignored,
    so a shutting-down control plane never sees its workers vanish first.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    authority: Authority | None = None
    policy: SigningPolicy | None = None
    buffer = bytearray()
    os.write(stdout, _frame((0, "ready", None)))  # request ids start at 1
    while True:
        data = os.read(stdin, 1 << 16)
        if not data:
            return
        buffer += data
        out = bytearray()
        for message in _frames(buffer):
            if message[0] == "init":
                authority = _load_authority(message)
            elif message[0] == "policy":
                policy = message[1]
            else:
                out += _frame(_handle(authority, policy, message))
        view = memoryview(out)
        while view:
            view = view[os.write(stdout, view) :]


if __name__ == "__main__":
    worker_main()
