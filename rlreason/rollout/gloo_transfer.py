"""Weight transfer to vLLM servers over gloo (plain TCP): the wire format both sides share.

vLLM's server exposes a weight-update protocol (``VLLM_SERVER_DEV_MODE=1 vllm serve ...
--weight-transfer-config '{"backend": ...}'``, routes ``/init_weight_transfer_engine``,
``/start_weight_update``, ``/update_weights``, ``/finish_weight_update``): the trainer
announces the parameters over HTTP and streams the tensors through a process group it shares
with the server's workers. vLLM ships NCCL backends (GPU to GPU). This module adds a gloo
backend, which works between CPU processes and between any two machines that can open a TCP
connection: the trainer is rank 0 of a group with the server's workers (ranks 1..W, one per
tensor-parallel worker), and broadcasts the weights in byte buckets.

Torch only (the trainer side needs no vLLM installed). The server side, the part that lives
in vLLM's worker, is ``rlreason.rollout.vllm_plugin``; vLLM loads it through the
``vllm.general_plugins`` entry point this package declares.

Both sides cut the stream into the same buckets from the same metadata (``buckets``), so a
bucket's bytes need no header: sender and receivers agree on every offset in advance.
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import json
import logging
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist

from rlreason.rollout.errors import RolloutServerError, server_message

logger = logging.getLogger("rlreason.rollout")
DEFAULT_BUCKET_BYTES = 256 << 20  # big enough to amortise a round trip, small enough to hold twice


@dataclass(frozen=True)
class TensorMeta:
    name: str
    dtype: str  # torch dtype name without the "torch." prefix, e.g. "bfloat16"
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return _numel(self.shape) * torch.empty((), dtype=getattr(torch, self.dtype)).element_size()


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def buckets(metas: list[TensorMeta], bucket_bytes: int) -> list[list[int]]:
    """Consecutive runs of tensor indices whose bytes fit in ``bucket_bytes``; a tensor larger
    than the bucket gets a bucket of its own. Pure: sender and receivers compute the same."""
    out: list[list[int]] = []
    cur: list[int] = []
    size = 0
    for i, m in enumerate(metas):
        if cur and size + m.nbytes > bucket_bytes:
            out.append(cur)
            cur, size = [], 0
        cur.append(i)
        size += m.nbytes
    if cur:
        out.append(cur)
    return out


def pack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Tensors of any dtypes -> one flat uint8 buffer (their bytes, in order)."""
    return torch.cat([t.detach().contiguous().cpu().reshape(-1).view(torch.uint8) for t in tensors])


def unpack(buf: torch.Tensor, metas: list[TensorMeta]) -> list[tuple[str, torch.Tensor]]:
    """Inverse of ``pack``: (name, tensor) views into ``buf``, in order."""
    out, off = [], 0
    for m in metas:
        n = m.nbytes
        out.append((m.name, buf[off:off + n].view(getattr(torch, m.dtype)).view(m.shape)))
        off += n
    if off != buf.numel():
        raise ValueError(f"weight bucket holds {buf.numel()} bytes, the metadata describes {off}")
    return out


def gloo_group(host: str, port: int, rank: int, world_size: int, timeout_s: float = 300.0) -> dist.ProcessGroup:
    """A gloo process group of its own (outside torch.distributed's global state, so it does
    not clash with accelerate's or vLLM's default group). Rank 0 hosts the rendezvous store."""
    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout)
    return dist.ProcessGroupGloo(dist.PrefixStore("rlreason-weight-transfer", store), rank, world_size, timeout)


def broadcast_(group: dist.ProcessGroup, buf: torch.Tensor) -> None:
    """In-place broadcast of ``buf`` from group rank 0."""
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    opts.rootTensor = 0
    group.broadcast([buf], opts).wait()


def local_address_towards(host: str, port: int) -> str:
    """The address of this machine on the route to ``host`` (what the server's workers must
    dial to reach this process). A UDP connect sends nothing; it only picks the route."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((host, port))
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


# ---------------------------------------------------------------------- trainer side


class HTTPClient:
    """JSON over HTTP to a vLLM server (stdlib only).

    A request that is safe to send again (``retry``: GETs by default; the engine also marks its
    generation requests and the prefix-cache reset) and fails transiently (an HTTP 5xx answer, a
    refused, reset or dropped connection, a timeout) is sent again up to ``max_retries`` times,
    after ``retry_delay_s`` seconds, then twice as long each time (1 + 2 + 4 = 7 s in all with the
    defaults: a server restarting under a supervisor, a proxy's hiccup), each retry logged. Then,
    and at once for a 4xx answer or a request that must not be repeated, it raises
    ``RolloutServerError`` with the URL, the HTTP status and the server's message."""

    def __init__(self, base_url: str, timeout_s: float = 600.0, max_retries: int = 3,
                 retry_delay_s: float = 1.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.retry_delay_s = retry_delay_s

    def request(self, path: str, payload: dict[str, Any] | None = None, method: str | None = None, *,
                retry: bool | None = None) -> Any:
        url = f"{self.base_url}/{path.lstrip('/')}"
        method = method or ("GET" if payload is None else "POST")
        data = None if payload is None else json.dumps(payload).encode()
        attempts = 1 + (self.max_retries if (method == "GET" if retry is None else retry) else 0)
        answer: tuple[int, str] | None = None  # the last HTTP error answer: its status and the server's message
        for attempt in range(1, attempts + 1):
            req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                    body = r.read()
                return json.loads(body) if body else None
            except urllib.error.HTTPError as e:
                answer = (e.code, _error_message(e))
                if e.code < 500:  # the request itself is wrong (404: a route the server lacks): no repeat mends it
                    raise RolloutServerError(url, e.code, answer[1], attempt) from e
                error: Exception = e
                what = f"HTTP {e.code}: {answer[1][:200]}"
            # refused, reset or dropped (RemoteDisconnected, IncompleteRead), timed out
            except (OSError, http.client.HTTPException) as e:
                error, what = e, f"{type(e).__name__}: {e}"
            if attempt == attempts:
                if answer is None:
                    raise RolloutServerError(url, None, what, attempt) from error
                # The server's message outlives later failed connections: after its engine died,
                # vLLM answers HTTP 500 once and then stops serving, so the retries are refused.
                later = "" if isinstance(error, urllib.error.HTTPError) else f" (the last attempt: {what})"
                raise RolloutServerError(url, answer[0], answer[1] + later, attempt) from error
            wait = self.retry_delay_s * 2 ** (attempt - 1)
            logger.warning("vLLM server %s: attempt %d/%d failed (%s); retrying in %.3gs", url, attempt, attempts,
                           what, wait)
            time.sleep(wait)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def post(self, path: str, payload: dict[str, Any] | None = None, *, retry: bool = False) -> Any:
        """POST; ``retry``: only for requests that change nothing when repeated (see ``request``)."""
        return self.request(path, payload if payload is not None else {}, method="POST", retry=retry)


def _error_message(e: urllib.error.HTTPError) -> str:
    """The server's message in an error answer; the reason phrase if its body cannot be read."""
    try:
        return server_message(e.read())
    except (OSError, http.client.HTTPException):  # the connection dropped while the body was read
        return str(e.reason)


class GlooWeightSender:
    """Trainer side of the gloo backend: joins the group with the server's workers once, then
    ``send`` pushes a full set of weights (checkpoint names and layout) each sync."""

    def __init__(self, client: HTTPClient, *, master_address: str, master_port: int, num_workers: int,
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES, timeout_s: float = 300.0) -> None:
        self.client = client
        self.bucket_bytes = bucket_bytes
        world_size = 1 + num_workers
        init_info = {"master_address": master_address, "master_port": master_port, "rank_offset": 1,
                     "world_size": world_size, "bucket_bytes": bucket_bytes, "timeout_s": timeout_s}
        # The workers block in the rendezvous inside this request; join it from here meanwhile.
        with ThreadPoolExecutor(max_workers=1) as pool:
            fut = pool.submit(client.post, "init_weight_transfer_engine", {"init_info": init_info})
            try:
                self.group = gloo_group(master_address, master_port, 0, world_size, timeout_s)
            finally:
                fut.result()

    def send(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        named = [(n, t.detach()) for n, t in named_tensors]
        metas = [TensorMeta(n, str(t.dtype).removeprefix("torch."), tuple(t.shape)) for n, t in named]
        self._start_update()
        with ThreadPoolExecutor(max_workers=1) as pool:
            # The workers receive inside this request, so it runs while we broadcast.
            fut = pool.submit(self.client.post, "update_weights",
                              {"update_info": {"params": [asdict(m) for m in metas]}})
            try:
                for idx in buckets(metas, self.bucket_bytes):
                    if fut.done():  # the server refused the update: don't block in a broadcast nobody joins
                        fut.result()
                    broadcast_(self.group, pack([named[i][1] for i in idx]))
            finally:
                fut.result()
        self.client.post("finish_weight_update")

    def _start_update(self) -> None:
        """``start_weight_update``. A trainer killed between its start and its finish leaves the update
        open, and vLLM's workers then refuse every new one ("already active"), so the next trainer
        could never sync: it finishes the stale update first (vLLM puts back the weights of the layers
        that received none, tests/test_vllm_async.py) and starts its own, whose full push replaces
        them all."""
        try:
            self.client.post("start_weight_update")
        except RolloutServerError as e:
            if "already active" not in e.message:
                raise
            logger.warning("vLLM server %s: a weight update left open by an earlier trainer; finishing it before "
                           "this one's full update", self.client.base_url)
            self.client.post("finish_weight_update")
            self.client.post("start_weight_update")

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):  # the server may be gone; the group dies with us anyway
            self.client.post("shutdown_weight_transfer_engine")
        self.group = None


def iter_bucket_tensors(group: dist.ProcessGroup, metas: list[TensorMeta],
                        bucket_bytes: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Receiver side: yield each bucket's (name, tensor) pairs as it arrives."""
    for idx in buckets(metas, bucket_bytes):
        part = [metas[i] for i in idx]
        buf = torch.empty(sum(m.nbytes for m in part), dtype=torch.uint8)
        broadcast_(group, buf)
        yield unpack(buf, part)
