"""Config section `augmentation`: random transforms of training images, mixup and cutmix.

It lives here only to keep `tunesmith.config` within its size budget (like `_config_search.py`);
`RunConfig` includes it, `tunesmith.config.AugmentationConfig` still names it, and the config
reference is generated from its docstrings like every other section.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    # The same rules as the sections in tunesmith.config.
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class AugmentationConfig(_Section):
    preset: Literal["none", "light", "strong"] = "light"
    """Images: training augmentation. `none`: resize and centre crop, as in evaluation; `light`:
    random resized crop (scale 0.35-1) and horizontal flip; `strong`: random resized crop
    (0.08-1), flip, RandAugment and random erasing. Evaluation always resizes and centre-crops."""
    auto_augment: str | None = None
    """Replace the preset's policy: a timm string (`rand-m9-mstd0.5-inc1`, `augmix-m5`), `trivial`
    (TrivialAugment) or `none`."""
    re_prob: float | None = Field(None, ge=0.0, le=1.0)
    """Random-erasing probability per image (`null` keeps the preset's: 0.25 for `strong`)."""
    mixup_alpha: float = Field(0.0, ge=0.0)
    """Mixup: blend pairs of training images and their labels, mixing weight ~ Beta(alpha, alpha); 0 disables."""
    cutmix_alpha: float = Field(0.0, ge=0.0)
    """CutMix: paste a box from another training image, box area ~ Beta(alpha, alpha); 0 disables.
    With both set, each batch uses one of the two at random."""
