"""The capture corpus: real models as their authors wrote them.

`CORPUS` lists entries (name, style, build); `build(seed)` returns (model, example_inputs).
torchrec_models.py: the models shipped in the installed torchrec, each also as a user's copy
(its source file executed as another module); styles.py: small models written here, one
per input style (batch dataclass, dict, one float tensor with id columns, attention, no
dense input); composite.py: the reference DLRM's quotient-remainder (both combine modes)
and mixed-dimension bags; joint.py: joint tables (one weight for all fields, per-field
offsets), split by field where the offsets are constants, else whole with a warning;
modes.py: BatchNorm / Dropout after the embeddings, captured by each route in each mode;
fm_family.py: FM, DeepFM, Wide&Deep with width-1, -3 and -10 tables; dcn.py: DCN-v2 cross
networks (full-rank, low-rank experts); ctr_inputs.py: batch classes and padding_idx."""

from __future__ import annotations

from tests.harness.corpus.composite import COMPOSITE_ENTRIES
from tests.harness.corpus.ctr_inputs import CTR_INPUT_ENTRIES
from tests.harness.corpus.dcn import DCN_ENTRIES
from tests.harness.corpus.entry import Entry
from tests.harness.corpus.fm_family import FM_ENTRIES
from tests.harness.corpus.joint import JOINT_ENTRIES
from tests.harness.corpus.modes import MODE_ENTRIES
from tests.harness.corpus.styles import STYLE_ENTRIES
from tests.harness.corpus.torchrec_models import TORCHREC_ENTRIES

CORPUS: tuple[Entry, ...] = (TORCHREC_ENTRIES + STYLE_ENTRIES + COMPOSITE_ENTRIES + JOINT_ENTRIES + MODE_ENTRIES
                             + DCN_ENTRIES + CTR_INPUT_ENTRIES + FM_ENTRIES)

__all__ = ["CORPUS", "Entry"]
