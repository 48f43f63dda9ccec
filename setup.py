"""Builds fastconv's extension modules with CMake (the pybind11 `cmake_example` pattern).

Environment: FASTCONV_CUDA=AUTO|ON|OFF (default AUTO), CUDAARCHS (e.g. "90"), CUDACXX,
FASTCONV_SANITIZE=1 (build _emu with ASan/UBSan), CMAKE_BUILD_PARALLEL_LEVEL.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class CMakeExtension(Extension):
    def __init__(self, name: str, sourcedir: str = "") -> None:
        super().__init__(name, sources=[])
        self.sourcedir = os.fspath(Path(sourcedir).resolve())


def _find_nvcc():
    """nvcc on PATH, else the toolkit's default location (CMake does not look there)."""
    if os.environ.get("CUDACXX"):
        return os.environ["CUDACXX"]
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and Path(root, "bin", "nvcc").exists():
            return str(Path(root, "bin", "nvcc"))
    return None


class CMakeBuild(build_ext):
    def run(self):
        # setuptools clears `inplace` while the extensions build (it copies them afterwards), so
        # remember here whether this build goes into the source tree.
        self._in_source = bool(self.inplace)
        super().run()

    def build_extension(self, ext: CMakeExtension) -> None:
        import pybind11

        extdir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        mode = os.environ.get("FASTCONV_CUDA", "AUTO").upper()
        sanitize = os.environ.get("FASTCONV_SANITIZE") == "1"
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}{os.sep}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            # Sanitizer reports need file:line, and pybind11 strips Release modules.
            f"-DCMAKE_BUILD_TYPE={'RelWithDebInfo' if sanitize else 'Release'}",
            f"-DFASTCONV_CUDA={mode}",
            f"-DFASTCONV_SANITIZE={'ON' if sanitize else 'OFF'}",
        ]
        env = dict(os.environ)
        nvcc = _find_nvcc() if mode != "OFF" else None
        if nvcc:
            env["CUDACXX"] = nvcc
        if shutil.which("ninja") or _python_ninja():
            args.append("-GNinja")
        env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))

        build_temp = Path(self.build_temp) / ext.name
        build_temp.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cmake", ext.sourcedir, *args], cwd=build_temp, check=True, env=env)
        subprocess.run(["cmake", "--build", "."], cwd=build_temp, check=True, env=env)
        self._place_cuda_module(extdir)

    def _place_cuda_module(self, extdir: Path) -> None:
        """CMake builds _cuda beside _emu. A regular install packages everything in that folder;
        an editable install copies only the declared extension (_emu) into the source tree, so
        _cuda is copied there too (and a stale copy removed when this build made none)."""
        if not (getattr(self, "editable_mode", False) or getattr(self, "_in_source", False)):
            return
        package = Path(__file__).resolve().parent / "fastconv"
        built = sorted(extdir.glob("_cuda*.so"))
        for stale in package.glob("_cuda*.so"):
            if not built or stale.name != built[0].name:
                stale.unlink()
        for module in built:
            shutil.copy2(module, package / module.name)


def _python_ninja():
    try:
        import ninja  # noqa: F401
        return True
    except ImportError:
        return False


setup(
    ext_modules=[CMakeExtension("fastconv._emu")],
    cmdclass={"build_ext": CMakeBuild},
)
