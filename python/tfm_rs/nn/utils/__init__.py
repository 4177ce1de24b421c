"""Utilities on modules, as ``torch.nn.utils``: :mod:`~tfm_rs.nn.utils.prune`."""

from tfm_rs.nn.utils import prune

__all__ = ["prune"]
