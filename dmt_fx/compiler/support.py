"""Which embedding modules the compiler can rewrite, decided by TYPE before any tracing.

A class-name test ("Quant" in the name) refused every attention model, because
`nn.MultiheadAttention.out_proj` is a `NonDynamicallyQuantizableLinear`. Each refusal here
names the module, what it is, and a remedy that applies to that kind of module.
"""

from __future__ import annotations

import dataclasses

import torch.ao.nn.quantized as ao_quantized
import torch.nn as nn
import torchrec.quant.embedding_modules as quant
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.types import ShardedModule
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.modules.fp_embedding_modules import FeatureProcessedEmbeddingBagCollection
from torchrec.modules.mc_embedding_modules import (
    ManagedCollisionEmbeddingBagCollection,
    ManagedCollisionEmbeddingCollection,
)

from dmt_fx.ir.errors import NoEmbeddingError, UnsupportedEmbeddingError

EMBEDDING_TYPES = (EmbeddingBagCollection, EmbeddingCollection, nn.EmbeddingBag, nn.Embedding)
EXPECTED = ("embeddings as float, unsharded torchrec EmbeddingBagCollection or EmbeddingCollection, "
            "nn.EmbeddingBag or nn.Embedding")


@dataclasses.dataclass(frozen=True)
class Refusal:
    types: tuple[type, ...]
    what: str
    fixes: tuple[str, ...]


REFUSALS = (
    Refusal((ShardedModule, DistributedModelParallel), "an already sharded module",
            ("pass the unsharded model (the module you would give DistributedModelParallel) to "
             "dmt_fx.transform, then shard the result with dmt_fx.distribute",)),
    Refusal((quant.EmbeddingBagCollection, quant.EmbeddingCollection, ao_quantized.Embedding,
             ao_quantized.EmbeddingBag), "a quantized (inference) embedding module",
            ("transform the float model, before quantization (its tables are float "
             "EmbeddingBagCollection / nn.EmbeddingBag / nn.Embedding modules)",)),
    Refusal((FeatureProcessedEmbeddingBagCollection,), "a FeatureProcessedEmbeddingBagCollection",
            ("apply the feature processing to the KeyedJaggedTensor's weights before the model and "
             "use a weighted EmbeddingBagCollection (is_weighted=True)",)),
    Refusal((ManagedCollisionEmbeddingBagCollection,), "a ManagedCollisionEmbeddingBagCollection",
            ("remap the ids with the ManagedCollisionCollection before the model and pass its "
             "EmbeddingBagCollection (the module's `_embedding_module`)",)),
    Refusal((ManagedCollisionEmbeddingCollection,), "a ManagedCollisionEmbeddingCollection",
            ("remap the ids with the ManagedCollisionCollection before the model and pass its "
             "EmbeddingCollection (the module's `_embedding_module`)",)),
)


def refusal(module: nn.Module) -> Refusal | None:
    """The first refusal whose types `module` is an instance of, or None."""
    return next((r for r in REFUSALS if isinstance(module, r.types)), None)


def check_supported(model: nn.Module) -> None:
    """Refuse what we cannot rewrite, naming the module; then require one embedding module."""
    found_embedding = False
    for fqn, module in model.named_modules():
        refused = refusal(module)
        if refused is not None:
            raise UnsupportedEmbeddingError(
                f"{refused.what} ({type(module).__module__}.{type(module).__name__}) at {fqn or '<root>'!r}",
                EXPECTED, refused.fixes)
        found_embedding |= isinstance(module, EMBEDDING_TYPES)
    if not found_embedding:
        raise NoEmbeddingError(
            f"{type(model).__name__} has no embedding module",
            "at least one EmbeddingBagCollection, nn.EmbeddingBag or nn.Embedding",
            ["DMT splits embedding lookups into towers; a model without them has nothing to split"],
        )
