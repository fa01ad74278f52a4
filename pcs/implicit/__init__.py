"""PILoT: x = m * w with a time-dependent decay (pilot), its balanced preset (spred),
and the same flow run as mirror descent on x (mirror, with its maps)."""

from pcs.implicit._mirror import (MirrorState, inverse_mirror_map, mirror, mirror_map,
                                  mirror_step)
from pcs.implicit._pilot import Balanced, Factors, Scale, pilot, product_init, spred
