"""The continuous sparsification methods PILoT is compared with, in the same interface."""

from pcs.baselines._continuous_sparsification import (MaskLatent, MaskState,
                                                      continuous_sparsification)
from pcs.baselines._l1 import L1State, l1
from pcs.baselines._powerprop import PowerLatent, powerprop
from pcs.baselines._soft_threshold import ThresholdLatent, soft_threshold
