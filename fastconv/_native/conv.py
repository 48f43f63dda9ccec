"""conv ops. (To be written.)"""

__all__ = []
