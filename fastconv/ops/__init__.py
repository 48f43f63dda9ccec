"""fastconv's functional API: each op's forward and backward, validated here once, then run by the
current backend (fastconv.get_backend()). Arrays come back on the backend's device."""
from . import conv, conv_pool, dense, loss, optim, pool
from .conv import *  # noqa: F401,F403
from .conv_pool import *  # noqa: F401,F403
from .dense import *  # noqa: F401,F403
from .loss import *  # noqa: F401,F403
from .optim import *  # noqa: F401,F403
from .pool import *  # noqa: F401,F403

__all__ = [*dense.__all__, *conv.__all__, *conv_pool.__all__, *pool.__all__, *loss.__all__, *optim.__all__]
