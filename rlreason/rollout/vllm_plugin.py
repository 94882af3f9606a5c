"""The vLLM side of rlreason's gloo weight transfer, loaded by vLLM as a general plugin.

``pyproject.toml`` declares ``register`` under the ``vllm.general_plugins`` entry point, so
every vLLM process (API server, engine core, workers) runs it at start-up and a server started
with ``--weight-transfer-config '{"backend": "gloo"}'`` finds the backend in vLLM's
``WeightTransferEngineFactory``. vLLM's own engines cover NCCL; this one covers CPU servers and
networks without NCCL (see ``rlreason.rollout.gloo_transfer`` for the wire format).

Received weights go through vLLM's layerwise reload, as in vLLM's NCCL engine, plus the step
the colocated engine needs on CPU: the post-processing of tied weights is re-run for every
module sharing them (``rlreason.rollout.vllm._tied_modules`` explains why).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

BACKEND = "gloo"


def register() -> None:
    """Entry point for ``vllm.general_plugins``: add the gloo backend to vLLM's factory."""
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

    if BACKEND not in WeightTransferEngineFactory._registry:  # plugins may load more than once per process
        WeightTransferEngineFactory.register_engine(BACKEND, _engine_class())


@dataclass
class GlooInitInfo:
    master_address: str
    master_port: int
    rank_offset: int
    world_size: int
    bucket_bytes: int
    timeout_s: float = 300.0


@dataclass
class GlooUpdateInfo:
    params: list[dict[str, Any]]  # TensorMeta fields: name, dtype, shape


def _engine_class():
    from vllm.distributed.weight_transfer.base import WeightTransferEngine
    from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, initialize_layerwise_reload

    from rlreason.rollout.gloo_transfer import TensorMeta, gloo_group, iter_bucket_tensors
    from rlreason.rollout.vllm import _tied_modules

    class GlooWeightTransferEngine(WeightTransferEngine[GlooInitInfo, GlooUpdateInfo]):
        """Receives full checkpoint-format weights from the trainer (group rank 0) in buckets."""

        init_info_cls = GlooInitInfo
        update_info_cls = GlooUpdateInfo
        supports_draft_weight_update = False

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.group = None
            self.bucket_bytes = 0
            self._tied: list[torch.nn.Module] = []

        def init_transfer_engine(self, init_info: GlooInitInfo) -> None:
            pc = self.parallel_config
            # one rank per worker across data-parallel replicas, after the trainer's rank 0
            rank = init_info.rank_offset + pc.data_parallel_index * pc.world_size + pc.rank
            self.bucket_bytes = init_info.bucket_bytes
            self.group = gloo_group(init_info.master_address, init_info.master_port, rank, init_info.world_size,
                                    init_info.timeout_s)

        def start_weight_update(self) -> None:
            self._tied = _tied_modules(self.model)  # found before the reload empties the packed weights
            initialize_layerwise_reload(self.model)

        def update_weights(self, update_info: dict[str, Any]) -> None:
            # The base class synchronises an accelerator afterwards; a CPU worker has none.
            self.receive_weights(self.parse_update_info(update_info))
            if torch.accelerator.is_available():
                torch.accelerator.synchronize()

        def receive_weights(self, update_info: GlooUpdateInfo) -> None:
            if self.group is None:
                raise RuntimeError("gloo weight transfer: init_weight_transfer_engine was not called")
            metas = [TensorMeta(p["name"], p["dtype"], tuple(p["shape"])) for p in update_info.params]
            with torch.no_grad():
                for pairs in iter_bucket_tensors(self.group, metas, self.bucket_bytes):
                    self.model.load_weights([(n, t.to(self.device)) for n, t in pairs])

        def finish_weight_update(self) -> None:
            with torch.no_grad():
                finalize_layerwise_reload(self.model, self.model_config)
                for mod in self._tied:  # the reload post-processes a tied weight for one module only
                    mod.quant_method.process_weights_after_loading(mod)
            self._tied = []

        def shutdown(self) -> None:
            self.group = None

    return GlooWeightTransferEngine
