"""Numba's on-disk cache, made safe for processes that compile at the same time: a kernel loaded
from it runs only for the signature, and the CPU, it was compiled for.

Numba's index file of a function maps each signature's key (the argument types, the CPU and its
features, the code's hash) to a data file named by its order (kernel-NN.py311.1.nbc, .2.nbc, ...).
Two processes that compile different keys of one kernel at the same moment (two trainings started
together on a fresh install, pytest-xdist's workers, fit and its compile-ahead helper, or machines
with different CPUs sharing one cache directory) can both pick the same data file for their own
key, and the index can end up pointing one key at the other's machine code (Numba takes no lock
there: numba/numba#10128 reports the like for its gufuncs' two files). From then on every process
would load that code for it: a call fails to unbox its arguments (a TypeError, at every call, until
the cache is deleted), runs the wrong code on arrays of a layout that unboxes alike, or, crossed
between two CPUs' keys, runs instructions the host lacks.

Here each data file is named by a hash of its key, the source file's stamp and Numba's version
instead (_DataFilesNamedByKey), so no two keys ever share one, and it is written before the index
points at it; the race can then only lose an index entry (that kernel is compiled again by a later
process). Numba's numbering reused an older source's files; here they are removed when an index of
an older source is replaced. And a loaded entry whose signature differs from the one asked for is
dropped and compiled afresh (_SignatureCheckedCache): what an index written with Numba's numbering
(an older fastconv's) may still hold.

check_signatures(modules) applies both to the kernels (Numba dispatchers with cache=True) defined
in those modules; the cpu backend calls it for its own modules before any kernel runs.
"""
import hashlib
import inspect
import os

from numba.core import sigutils
from numba.core.caching import FunctionCache, IndexDataCacheFile
from numba.core.dispatcher import Dispatcher

__all__ = ["check_signatures"]


class _SignatureCheckedCache(FunctionCache):
    def _load_overload(self, sig, target_context):
        compiled = super()._load_overload(sig, target_context)
        if compiled is not None:
            args, _ = sigutils.normalize_signature(sig)
            if tuple(compiled.signature.args) != tuple(args):
                return None  # another signature's code: compile this one afresh
        return compiled


class _DataFilesNamedByKey(IndexDataCacheFile):
    def save(self, key, data):
        existed = os.path.exists(self._index_path)  # (asked first: one another process writes meanwhile is fresh)
        overloads = self._load_index()
        if existed and not overloads:  # an older source's index: its data files go (Numba reused their numbers)
            self._remove_data_files()
        name = self._data_name_of(key)
        self._save_data(name, data)
        if overloads.get(key) != name:
            overloads = self._load_index()  # (again, just before writing: what another process added)
            overloads[key] = name
            self._save_index(overloads)

    def _data_name_of(self, key):
        """The key's data file. The key holds the function's own code but not what it inlines from
        elsewhere in its file: Numba's version and the file's stamp go into the name too, so a process
        still running an older source (or another Numba) never writes the file a newer one reads."""
        digest = hashlib.sha256(repr((self._version, self._source_stamp, key)).encode()).hexdigest()
        return f"{self._base()}.{digest[:20]}.nbc"

    def _base(self):
        return self._index_name[:-len(".nbi")]

    def _remove_data_files(self):
        try:
            names = os.listdir(self._cache_path)
        except OSError:
            return
        prefix = self._base() + "."
        for name in names:
            if name.startswith(prefix) and name.endswith(".nbc"):
                try:
                    os.remove(os.path.join(self._cache_path, name))
                except OSError:
                    pass


# Numba's IndexDataCacheFile.save as this module overrides it (a Numba that changed it keeps its own
# naming, and the signature check).
NAMES_BY_KEY = list(inspect.signature(IndexDataCacheFile.save).parameters) == ["self", "key", "data"]


def check_signatures(modules):
    """Each cached kernel defined in `modules` gets the checked cache and the data files named by
    key (idempotent)."""
    for module in modules:
        for value in vars(module).values():
            if isinstance(value, Dispatcher) and type(getattr(value, "_cache", None)) is FunctionCache:
                value._cache.__class__ = _SignatureCheckedCache
                if NAMES_BY_KEY and type(value._cache._cache_file) is IndexDataCacheFile:
                    value._cache._cache_file.__class__ = _DataFilesNamedByKey
