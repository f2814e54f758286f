"""Plugin discovery for CompressAI's model zoo.

CompressAI looks models up in plain dicts (``compressai.zoo.image_models``,
``compressai.zoo.image.model_architectures``, ...), with no plugin mechanism.
This module fills them from the ``compressai.models`` entry-point group, for
every installed package that declares it, so that CompressAI's own tools
(``eval_model``, ``update_model``) see plugin models unchanged.

An entry point names a zoo function ``f(quality, metric="mse",
pretrained=False, progress=True, **kwargs)``; its architecture class is found in
CompressAI's model registry under the same name (``@register_model(name)``) or
as the function's ``architecture`` attribute.

This file is installed as the top-level module ``compressai_plugin_hook`` (not
inside the ``compressai_feds`` package, so that loading it never imports the
package), imported at interpreter start-up by ``compressai_plugin_hook.pth``.
At start-up it only adds a finder to ``sys.meta_path`` that waits for
``compressai.zoo`` to be imported: it imports neither torch nor compressai, and
any failure is swallowed so that Python always starts.
"""

# Only ``sys`` at module level: this runs at every interpreter start-up.
from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing itself costs ~9 ms of start-up
if TYPE_CHECKING:
    from collections.abc import Callable
    from importlib.machinery import ModuleSpec
    from types import ModuleType

ENTRY_POINT_GROUP = "compressai.models"
ZOO_MODULE = "compressai.zoo"

__all__ = ["ENTRY_POINT_GROUP", "install", "register_on_completion", "register_plugins"]


def _initializing(name: str) -> bool:
    spec = getattr(sys.modules.get(name), "__spec__", None)
    return bool(getattr(spec, "_initializing", False))


def _is_mid_import(module_name: str, complete: str | None = None) -> bool:
    """True while a module of the entry point's package other than ``complete``
    is being imported: ``import compressai`` in a plugin's module imports
    ``compressai.zoo``, and loading the plugin then would meet its own modules
    half made. Such a package registers its plugins when its last half-made
    module completes (:func:`register_on_completion`)."""
    package = module_name.split(".")[0]
    return any(
        _initializing(name)
        for name in list(sys.modules)
        if name != complete and (name == package or name.startswith(package + "."))
    )


def _warn(message: str) -> None:
    import warnings

    warnings.warn(message, stacklevel=3)


def register_plugins(zoo: ModuleType | None = None, complete: str | None = None) -> list[str]:
    """Adds every ``compressai.models`` entry point to CompressAI's zoo and registry.

    Safe to call repeatedly. A plugin that fails to load is skipped with a
    warning; one whose package has a module other than ``complete`` mid-import
    is left for later (see :func:`_is_mid_import`). Returns the names registered.
    """
    import importlib

    import entrypoints
    from compressai.registry import MODELS

    zoo = zoo or importlib.import_module(ZOO_MODULE)
    architectures = importlib.import_module(ZOO_MODULE + ".image").model_architectures
    registered = []
    for entry_point in entrypoints.get_group_all(ENTRY_POINT_GROUP):
        name = entry_point.name
        if _is_mid_import(entry_point.module_name, complete):
            continue
        try:
            factory = entry_point.load()
        except Exception as exc:  # a broken plugin must not break CompressAI
            _warn(f"CompressAI plugin model {name!r} failed to load: {exc}")
            continue
        architecture = MODELS.get(name) or getattr(factory, "architecture", None)
        zoo.image_models[name] = factory
        zoo.models[name] = factory
        if architecture is not None:
            architectures[name] = architecture
            MODELS.setdefault(name, architecture)
        registered.append(name)
    return registered


def _wrap_exec_module(spec: ModuleSpec, after: Callable[[ModuleType], None]) -> None:
    """Makes ``spec``'s loader call ``after(module)`` once the module has run."""
    exec_module = spec.loader.exec_module

    def exec_then(module: ModuleType) -> None:
        exec_module(module)
        after(module)

    spec.loader.exec_module = exec_then


def _find_spec_elsewhere(finder: object, fullname: str, path: object, target: object) -> ModuleSpec | None:
    """The spec the other ``sys.meta_path`` finders give ``fullname``."""
    for other in list(sys.meta_path):
        if other is not finder and hasattr(other, "find_spec"):
            spec = other.find_spec(fullname, path, target)
            if spec is not None:
                return spec
    return None


def _register_or_warn(zoo: ModuleType, complete: str | None = None) -> list[str]:
    try:
        return register_plugins(zoo, complete)
    except Exception as exc:
        _warn(f"CompressAI plugin registration failed: {exc}")
        return []


class _RegisterAfterZooImport:
    """One-shot ``sys.meta_path`` finder: lets ``compressai.zoo`` load as usual,
    then calls :func:`register_plugins` on it."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> ModuleSpec | None:
        if fullname != ZOO_MODULE:
            return None
        sys.meta_path.remove(self)
        spec = _find_spec_elsewhere(self, fullname, path, target)
        if spec is not None and spec.loader is not None:
            _wrap_exec_module(spec, _register_or_warn)
        return spec


class _RegisterOnPackageCompletion:
    """``sys.meta_path`` finder for one plugin package: the first time one of
    its modules finishes importing with no other module of the package half made
    and ``compressai.zoo`` loaded, registers the plugins and retires. The hook at
    ``compressai.zoo``'s import leaves a package that is mid-import for later;
    this is the later."""

    def __init__(self, package: str) -> None:
        self.package = package

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> ModuleSpec | None:
        if not fullname.startswith(self.package + "."):
            return None
        spec = _find_spec_elsewhere(self, fullname, path, target)
        if spec is not None and spec.loader is not None:
            _wrap_exec_module(spec, self.module_complete)
        return spec

    def module_complete(self, module: ModuleType) -> None:
        zoo = sys.modules.get(ZOO_MODULE)
        if not hasattr(zoo, "image_models") or _is_mid_import(module.__name__, module.__name__):
            return
        sys.meta_path.remove(self)
        _register_or_warn(zoo, module.__name__)


def register_on_completion(package: str) -> None:
    """Called by a plugin package's ``__init__``: registers its plugins once
    the import that is loading its modules completes, whichever module it
    began with (see :class:`_RegisterOnPackageCompletion`)."""
    if not any(getattr(f, "package", None) == package for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnPackageCompletion(package))


def install() -> None:
    """Registers plugins now if ``compressai.zoo`` is loaded, else when it is."""
    if ZOO_MODULE in sys.modules:
        register_plugins(sys.modules[ZOO_MODULE])
    elif not any(isinstance(f, _RegisterAfterZooImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterZooImport())
