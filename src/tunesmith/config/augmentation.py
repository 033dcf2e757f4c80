"""Config section `augmentation`: random transforms of training images, mixup and cutmix.

Shared by every image task (a task that does not augment ignores it).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tunesmith.config._section import Section



class AugmentationConfig(Section):
    preset: Literal["none", "light", "strong", "weather"] = "light"
    """Images: training augmentation. `none`: resize and centre crop, as in evaluation; `light`:
    random resized crop (scale 0.35-1) and horizontal flip; `strong`: random resized crop
    (0.08-1), flip, RandAugment and random erasing; `weather`: `light` plus shifted conditions
    (low light, lost contrast, fog, blur, sensor noise), for cameras outdoors or a new site.
    Evaluation always resizes and centre-crops. Segmentation reads `light` as a rescale within
    `scale_range`, a square crop and flips, and evaluates whole images."""
    hflip: bool = True
    """Images: whether the `light` and `strong` presets flip training images left-right at random
    (probability 0.5). Turn it off where a mirror image means something else: text, digits, road
    signs, left/right body parts."""
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
